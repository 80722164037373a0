//! Study definitions: what a study collects, how quasi-identifiers are generalised, and the
//! Arrow schema and validator of the rows a donation carries.
//!
//! A steward writes a study as TOML (see `examples/t2d-study.toml`), signs it, and the intake
//! publishes the signed JSON form ([`crate::signing::SignedObject`] with context
//! `study-definition`). Both forms deserialise into [`StudyDefinition`] and are checked by
//! [`StudyDefinition::validate`].
//!
//! Rows: one row per donor and generalised period (day, ISO week or month) in which at least one
//! measure was observed. Columns, in order: `donor` (the per-study pseudonym, 64 lowercase hex
//! digits), `period`, then every field of the study in declaration order.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::geo::{municipalities, Region};
use crate::wire::{hex32, parse_json, WireError};

/// Largest study definition accepted (JSON or TOML).
pub const MAX_STUDY_LEN: usize = 64 * 1024;
/// Name of the pseudonym column.
pub const DONOR_COLUMN: &str = "donor";
/// Name of the generalised-date column.
pub const PERIOD_COLUMN: &str = "period";
/// Name of the consent-record column of sealed batches (Utf8, the consent record id as 32
/// lowercase hex digits). The intake adds it when it seals; donated rows do not carry it.
pub const CONSENT_COLUMN: &str = "consent";

/// Errors in a study definition or in rows checked against one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StudyError {
    /// The definition does not parse.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The TOML form does not parse; the message carries line and key.
    #[error("study TOML: {0}")]
    Toml(String),
    /// The definition parses but is inconsistent.
    #[error("invalid study definition: {0}")]
    Invalid(String),
    /// The rows' schema differs from the study's.
    #[error("rows schema differs from the study's: {0}")]
    SchemaMismatch(String),
    /// A value is outside its field's range or enumeration.
    #[error("row {row}, field `{field}`: {reason}")]
    BadValue {
        /// Zero-based row index.
        row: usize,
        /// Column name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Too many rows.
    #[error("{rows} rows; the limit is {limit}")]
    TooManyRows {
        /// Rows found.
        rows: usize,
        /// The limit.
        limit: usize,
    },
    /// The Arrow IPC stream does not decode.
    #[error("rows do not decode as an Arrow IPC stream: {0}")]
    Ipc(String),
}

/// A study identifier: 3–64 characters of `a-z`, `0-9` and `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StudyId(String);

impl StudyId {
    /// Validate a study id.
    pub fn new(s: &str) -> Result<Self, StudyError> {
        let ok = (3..=64).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(StudyError::Invalid(format!(
                "study id {s:?} must be 3-64 of [a-z0-9-], starting with a letter"
            )))
        }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StudyId {
    type Error = StudyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}
impl From<StudyId> for String {
    fn from(s: StudyId) -> String {
        s.0
    }
}
impl std::fmt::Display for StudyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The data controller named in the study and in every consent manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    /// Legal name.
    pub name: String,
    /// Contact for data-protection requests.
    pub contact: String,
}

/// A purpose a donor may consent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    /// Short machine code, e.g. `t2d-epidemiology`.
    pub code: String,
    /// The text shown to the donor.
    pub text: String,
}

/// The role of a field in queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May be grouped by and filtered on.
    Dimension,
    /// May be aggregated and filtered on.
    Measure,
}

/// A coding system the client maps from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSystemName {
    /// LOINC (`http://loinc.org`).
    Loinc,
    /// SNOMED CT (`http://snomed.info/sct`).
    Snomed,
    /// RxNorm.
    Rxnorm,
    /// Apple HealthKit type identifiers.
    Apple,
}

/// One source code of a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCode {
    /// Coding system.
    pub system: CodeSystemName,
    /// Code within the system.
    pub code: String,
}

/// A linear unit conversion into the field's unit: `value * factor + offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConversion {
    /// The source unit (UCUM or Apple's unit string).
    pub from: String,
    /// Multiplier.
    pub factor: f64,
    /// Added after multiplying.
    #[serde(default)]
    pub offset: f64,
}

/// How far observation dates are generalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// `YYYY-MM-DD`.
    Day,
    /// ISO week, `YYYY-Www`.
    Week,
    /// `YYYY-MM`.
    Month,
}

impl Granularity {
    /// Generalise a date.
    pub fn period_of(self, d: jiff::civil::Date) -> String {
        match self {
            Granularity::Day => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
            Granularity::Month => format!("{:04}-{:02}", d.year(), d.month()),
            Granularity::Week => {
                let w = d.iso_week_date();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
        }
    }

    /// Whether `s` is a well-formed period of this granularity.
    pub fn is_valid_period(self, s: &str) -> bool {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| {
            b.get(r.clone())
                .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
        };
        let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i16>().ok());
        match self {
            Granularity::Month => {
                b.len() == 7
                    && digits(0..4)
                    && b.get(4) == Some(&b'-')
                    && digits(5..7)
                    && num(5..7).is_some_and(|m| (1..=12).contains(&m))
            }
            Granularity::Day => {
                b.len() == 10
                    && digits(0..4)
                    && b.get(4) == Some(&b'-')
                    && b.get(7) == Some(&b'-')
                    && digits(5..7)
                    && digits(8..10)
                    && match (num(0..4), num(5..7), num(8..10)) {
                        (Some(y), Some(m), Some(d)) => {
                            jiff::civil::Date::new(y, m as i8, d as i8).is_ok()
                        }
                        _ => false,
                    }
            }
            Granularity::Week => {
                b.len() == 8
                    && digits(0..4)
                    && s.get(4..6) == Some("-W")
                    && digits(6..8)
                    && match (num(0..4), num(6..8)) {
                        (Some(y), Some(w)) => {
                            jiff::civil::ISOWeekDate::new(y, w as i8, jiff::civil::Weekday::Monday)
                                .is_ok()
                        }
                        _ => false,
                    }
            }
        }
    }
}

/// Which level a postcode is generalised to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionLevel {
    /// One of the five regions.
    Region,
    /// A municipality code.
    Municipality,
}

/// Where a field's values come from and how they are generalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldSource {
    /// A numeric observation (lab value, vital sign), in `unit`, within `[min, max]`.
    Observation {
        /// Codes that feed this field.
        codes: Vec<SourceCode>,
        /// The unit values are stored in.
        unit: String,
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
        /// Accepted source units other than `unit`.
        #[serde(default)]
        convert: Vec<UnitConversion>,
        /// Decimal places the field's published statistics are written with (0–6); absent:
        /// six significant digits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decimals: Option<u8>,
    },
    /// Whether the donor had one of these diagnoses on or before the period's observation date.
    Condition {
        /// Codes of the diagnosis.
        codes: Vec<SourceCode>,
    },
    /// Age band at the observation date, from the birth date (which never leaves the device).
    AgeBand {
        /// Width of a band in years.
        years: u8,
        /// Youngest donor accepted; younger donors' rows are not collected.
        min_age: u8,
        /// Ages at or above this fall into one open band `N+`.
        top_age: u8,
    },
    /// Administrative sex: `female`, `male`, `other` or `unknown`.
    Sex,
    /// Region or municipality of residence, from the postcode.
    Residence {
        /// The level.
        level: RegionLevel,
    },
}

/// One field a study collects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Column name: `[a-z][a-z0-9_]{0,31}`, not `donor` or `period`.
    pub name: String,
    /// Dimension or measure.
    pub role: Role,
    /// Description shown in the preview.
    pub description: String,
    /// Source and generalisation.
    pub source: FieldSource,
}

/// The Arrow type of a field's column, derived from its source.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    /// Float64, nullable, within a range.
    Number {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// Boolean, not null.
    Flag,
    /// Utf8, not null, one of these values.
    Category(Vec<String>),
}

impl FieldSpec {
    /// Decimal places the field's published statistics are written with, if the study says.
    pub fn decimals(&self) -> Option<u8> {
        match &self.source {
            FieldSource::Observation { decimals, .. } => *decimals,
            _ => None,
        }
    }

    /// The column's type.
    pub fn field_type(&self) -> FieldType {
        match &self.source {
            FieldSource::Observation { min, max, .. } => FieldType::Number {
                min: *min,
                max: *max,
            },
            FieldSource::Condition { .. } => FieldType::Flag,
            FieldSource::AgeBand {
                years,
                min_age,
                top_age,
            } => FieldType::Category(age_band_labels(*years, *min_age, *top_age)),
            FieldSource::Sex => {
                FieldType::Category(SEX_LABELS.iter().map(|s| s.to_string()).collect())
            }
            FieldSource::Residence {
                level: RegionLevel::Region,
            } => FieldType::Category(Region::ALL.iter().map(|r| r.label().to_string()).collect()),
            FieldSource::Residence {
                level: RegionLevel::Municipality,
            } => FieldType::Category(
                municipalities()
                    .iter()
                    .map(|m| m.code.to_string())
                    .collect(),
            ),
        }
    }

    /// The Arrow field of the column.
    pub fn arrow_field(&self) -> Field {
        match self.field_type() {
            FieldType::Number { .. } => Field::new(&self.name, DataType::Float64, true),
            FieldType::Flag => Field::new(&self.name, DataType::Boolean, false),
            FieldType::Category(_) => Field::new(&self.name, DataType::Utf8, false),
        }
    }
}

/// Labels of the sex dimension.
pub const SEX_LABELS: [&str; 4] = ["female", "male", "other", "unknown"];

/// The labels of an age-band field: bands aligned to multiples of `years`, the first starting
/// at `min_age`, the last the open band `top_age+`.
pub fn age_band_labels(years: u8, min_age: u8, top_age: u8) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if min_age > top_age {
        return out;
    }
    // One label per band: from each band's first age, jump past its last.
    let years = years.max(1);
    let mut age = min_age;
    while age < top_age {
        let next = (age / years)
            .saturating_add(1)
            .saturating_mul(years)
            .min(top_age);
        if let Some(l) = age_band_label(age, years, min_age, top_age) {
            out.push(l);
        }
        age = next;
    }
    out.push(format!("{top_age}+"));
    out
}

/// The band label for an age; `None` below `min_age` (such rows are not collected).
pub fn age_band_label(age: u8, years: u8, min_age: u8, top_age: u8) -> Option<String> {
    if age < min_age {
        return None;
    }
    if age >= top_age {
        return Some(format!("{top_age}+"));
    }
    let years = years.max(1);
    let aligned = (age / years) * years;
    let lo = aligned.max(min_age);
    let hi = (u16::from(aligned) + u16::from(years) - 1).min(u16::from(top_age) - 1);
    Some(format!("{lo}-{hi}"))
}

/// A study definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyDefinition {
    /// Format version; must be [`crate::PROTOCOL_VERSION`].
    pub format: u32,
    /// Study id.
    pub id: StudyId,
    /// Study version; a changed definition gets a higher version.
    pub version: u32,
    /// Title shown to donors.
    pub title: String,
    /// The data controller.
    pub controller: Controller,
    /// Purposes a donor can choose among (granular consent).
    pub purposes: Vec<Purpose>,
    /// Generalisation of observation dates.
    pub period: Granularity,
    /// Minimum number of distinct donors behind any published cell.
    pub min_k: u32,
    /// Retention of the donated data, in days from donation.
    pub retention_days: u32,
    /// Largest consent expiry a donor may choose, in days from consent.
    pub max_consent_days: u32,
    /// SHA-256 of the consent notice text shown to donors (lowercase hex).
    #[serde(with = "hex32")]
    pub notice_sha256: [u8; 32],
    /// Fields collected, in column order.
    pub fields: Vec<FieldSpec>,
    /// The threshold pseudonymisation service whose key gives this study's pseudonyms. A donor
    /// client refuses to donate to a study without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonymiser: Option<crate::threshold::PseudonymiserConfig>,
    /// The differential-privacy policy: budgets and contribution bounds. The query service
    /// refuses every query on a study without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacyPolicy>,
    /// The language of `title`, the purposes' texts and the notice `notice_sha256` names: a
    /// lowercase ISO 639-1 code. Absent means `en`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The same title, purposes and notice in other languages, at most one per language.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<Translation>,
}

/// The study's donor-facing texts in another language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Translation {
    /// Lowercase ISO 639-1 code, different from the study's own language and every other
    /// translation's.
    pub language: String,
    /// The title in this language.
    pub title: String,
    /// Every purpose's text in this language, by purpose code (exactly the study's codes).
    pub purposes: std::collections::BTreeMap<String, String>,
    /// SHA-256 of the consent notice text in this language (lowercase hex).
    #[serde(with = "hex32")]
    pub notice_sha256: [u8; 32],
}

/// The donor-facing texts of a study in one language: what a donor is shown before consenting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalizedTexts<'a> {
    /// The language code.
    pub language: &'a str,
    /// The title.
    pub title: &'a str,
    /// `(code, text)` of every purpose, in the study's order.
    pub purposes: Vec<(&'a str, &'a str)>,
    /// SHA-256 of the notice text in this language.
    pub notice_sha256: [u8; 32],
}

/// The language of a study that names none.
pub const DEFAULT_LANGUAGE: &str = "en";

fn is_language(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_lowercase())
}

impl StudyDefinition {
    /// Parse the authored TOML form and validate it.
    pub fn from_toml(text: &str) -> Result<Self, StudyError> {
        if text.len() > MAX_STUDY_LEN {
            return Err(WireError::TooLarge {
                field: "study",
                len: text.len(),
                limit: MAX_STUDY_LEN,
            }
            .into());
        }
        let s: Self = toml::from_str(text).map_err(|e| StudyError::Toml(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Parse the JSON payload of a signed study and validate it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, StudyError> {
        let s: Self = parse_json(bytes, "study definition", MAX_STUDY_LEN)?;
        s.validate()?;
        Ok(s)
    }

    /// The TOML form.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Check internal consistency.
    pub fn validate(&self) -> Result<(), StudyError> {
        let bad = |m: String| Err(StudyError::Invalid(m));
        if self.format != crate::PROTOCOL_VERSION {
            return bad(format!("format {} is not supported", self.format));
        }
        if self.version == 0 {
            return bad("version must be at least 1".into());
        }
        if self.purposes.is_empty() {
            return bad("at least one purpose is required".into());
        }
        if let Some(p) = &self.privacy {
            p.validate()
                .map_err(|e| StudyError::Invalid(e.to_string()))?;
        }
        self.validate_texts()?;
        for (i, p) in self.purposes.iter().enumerate() {
            if !is_code(&p.code) {
                return bad(format!(
                    "purpose {i}: code {:?} must be 1-64 of [a-z0-9-]",
                    p.code
                ));
            }
            if self.purposes.iter().filter(|q| q.code == p.code).count() > 1 {
                return bad(format!("purpose code {:?} appears twice", p.code));
            }
        }
        if let Some(p) = &self.pseudonymiser {
            p.validate()
                .map_err(|e| StudyError::Invalid(format!("pseudonymiser: {e}")))?;
        }
        if self.min_k < 2 {
            return bad("min_k must be at least 2".into());
        }
        if self.max_consent_days == 0 {
            return bad("max_consent_days must be at least 1".into());
        }
        if self.fields.is_empty() || self.fields.len() > 64 {
            return bad("a study has 1 to 64 fields".into());
        }
        let mut has_measure = false;
        for f in &self.fields {
            if !is_field_name(&f.name) {
                return bad(format!(
                    "field name {:?} must be [a-z][a-z0-9_]{{0,31}} and not donor/period",
                    f.name
                ));
            }
            if self.fields.iter().filter(|g| g.name == f.name).count() > 1 {
                return bad(format!("field {:?} appears twice", f.name));
            }
            match &f.source {
                FieldSource::Observation {
                    codes,
                    min,
                    max,
                    unit,
                    convert,
                    decimals,
                } => {
                    if codes.is_empty() {
                        return bad(format!("field {}: no source codes", f.name));
                    }
                    if decimals.is_some_and(|d| d > 6) {
                        return bad(format!("field {}: decimals must be 0 to 6", f.name));
                    }
                    if !(min.is_finite() && max.is_finite() && min < max) {
                        return bad(format!(
                            "field {}: range must be finite with min < max",
                            f.name
                        ));
                    }
                    if unit.is_empty()
                        || convert.iter().any(|c| {
                            !c.factor.is_finite() || !c.offset.is_finite() || c.factor == 0.0
                        })
                    {
                        return bad(format!(
                            "field {}: unit and conversions must be finite and non-empty",
                            f.name
                        ));
                    }
                    if f.role == Role::Measure {
                        has_measure = true;
                    } else {
                        return bad(format!("field {}: observations are measures", f.name));
                    }
                }
                FieldSource::Condition { codes } => {
                    if codes.is_empty() {
                        return bad(format!("field {}: no source codes", f.name));
                    }
                }
                FieldSource::AgeBand {
                    years,
                    min_age,
                    top_age,
                } => {
                    if *years == 0 || min_age >= top_age {
                        return bad(format!(
                            "field {}: need years >= 1 and min_age < top_age",
                            f.name
                        ));
                    }
                }
                FieldSource::Sex | FieldSource::Residence { .. } => {}
            }
            if f.role == Role::Measure && !matches!(f.source, FieldSource::Observation { .. }) {
                return bad(format!(
                    "field {}: only observations can be measures",
                    f.name
                ));
            }
        }
        if !has_measure {
            return bad("a study needs at least one measure".into());
        }
        Ok(())
    }

    fn validate_texts(&self) -> Result<(), StudyError> {
        let bad = |m: String| Err(StudyError::Invalid(m));
        let own = self.language();
        if !is_language(own) {
            return bad(format!(
                "language {own:?} must be a lowercase ISO 639-1 code"
            ));
        }
        if self.translations.len() > 16 {
            return bad("at most 16 translations".into());
        }
        for (i, t) in self.translations.iter().enumerate() {
            if !is_language(&t.language) {
                return bad(format!(
                    "translation {i}: language {:?} must be a lowercase ISO 639-1 code",
                    t.language
                ));
            }
            if t.language == own
                || self.translations[..i]
                    .iter()
                    .any(|u| u.language == t.language)
            {
                return bad(format!(
                    "translation {i}: language {} appears twice",
                    t.language
                ));
            }
            if t.title.trim().is_empty() || t.title.len() > 500 {
                return bad(format!(
                    "translation {}: title must be 1 to 500 bytes",
                    t.language
                ));
            }
            let codes: Vec<&str> = t.purposes.keys().map(String::as_str).collect();
            let mut expected: Vec<&str> = self.purpose_codes().collect();
            expected.sort_unstable();
            if codes != expected {
                return bad(format!(
                    "translation {}: purposes must be exactly the study's purpose codes",
                    t.language
                ));
            }
            if t.purposes
                .values()
                .any(|p| p.trim().is_empty() || p.len() > 2000)
            {
                return bad(format!(
                    "translation {}: purpose texts must be 1 to 2000 bytes",
                    t.language
                ));
            }
        }
        Ok(())
    }

    /// The language of the study's own title, purposes and notice.
    pub fn language(&self) -> &str {
        self.language.as_deref().unwrap_or(DEFAULT_LANGUAGE)
    }

    /// Every language the study's texts are given in: its own first, then the translations'.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.language())
            .chain(self.translations.iter().map(|t| t.language.as_str()))
    }

    /// The texts in `language`, if the study has them.
    pub fn texts(&self, language: &str) -> Option<LocalizedTexts<'_>> {
        if language == self.language() {
            return Some(LocalizedTexts {
                language: self.language(),
                title: &self.title,
                purposes: self
                    .purposes
                    .iter()
                    .map(|p| (p.code.as_str(), p.text.as_str()))
                    .collect(),
                notice_sha256: self.notice_sha256,
            });
        }
        let t = self.translations.iter().find(|t| t.language == language)?;
        Some(LocalizedTexts {
            language: &t.language,
            title: &t.title,
            purposes: self
                .purposes
                .iter()
                .map(|p| {
                    let text = t
                        .purposes
                        .get(&p.code)
                        .map_or(p.text.as_str(), String::as_str);
                    (p.code.as_str(), text)
                })
                .collect(),
            notice_sha256: t.notice_sha256,
        })
    }

    /// The texts in the first of `preferred` the study has, else in its own language.
    pub fn texts_for(&self, preferred: &[&str]) -> LocalizedTexts<'_> {
        preferred
            .iter()
            .find_map(|l| self.texts(l))
            .or_else(|| self.texts(self.language()))
            .unwrap_or_else(|| LocalizedTexts {
                language: DEFAULT_LANGUAGE,
                title: &self.title,
                purposes: Vec::new(),
                notice_sha256: self.notice_sha256,
            })
    }

    /// The SHA-256 of every notice text the study gives (its own language first): a consent
    /// manifest must name one of them.
    pub fn notice_hashes(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        std::iter::once(self.notice_sha256).chain(self.translations.iter().map(|t| t.notice_sha256))
    }

    /// Purpose codes.
    pub fn purpose_codes(&self) -> impl Iterator<Item = &str> {
        self.purposes.iter().map(|p| p.code.as_str())
    }

    /// The field of that name.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The Arrow schema of the study's rows.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(DONOR_COLUMN, DataType::Utf8, false),
            Field::new(PERIOD_COLUMN, DataType::Utf8, false),
        ];
        fields.extend(self.fields.iter().map(FieldSpec::arrow_field));
        Arc::new(Schema::new(fields))
    }

    /// The Arrow schema of a sealed batch's rows: [`Self::arrow_schema`] and, last, the
    /// [`CONSENT_COLUMN`] naming the consent record each row was donated under.
    pub fn batch_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(CONSENT_COLUMN, DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }

    /// Check a batch of rows against the study: exact schema, every value in its range or
    /// enumeration, periods well formed, at least one measure per row, and (when given) every
    /// row's `donor` equal to `pseudonym`.
    pub fn validate_rows(
        &self,
        batch: &RecordBatch,
        pseudonym: Option<&str>,
    ) -> Result<(), StudyError> {
        self.validate_rows_against(batch, &self.arrow_schema(), pseudonym)
    }

    /// [`Self::validate_rows`] with the study's [`Self::arrow_schema`] already built (a server
    /// checking many donations of one study builds it once).
    pub fn validate_rows_against(
        &self,
        batch: &RecordBatch,
        expected: &Schema,
        pseudonym: Option<&str>,
    ) -> Result<(), StudyError> {
        let got = batch.schema();
        if got.fields().len() != expected.fields().len() {
            return Err(StudyError::SchemaMismatch(format!(
                "{} columns, expected {}",
                got.fields().len(),
                expected.fields().len()
            )));
        }
        for (g, e) in got.fields().iter().zip(expected.fields().iter()) {
            if g.name() != e.name()
                || g.data_type() != e.data_type()
                || g.is_nullable() != e.is_nullable()
            {
                return Err(StudyError::SchemaMismatch(format!(
                    "column `{}` {:?} nullable={}, expected `{}` {:?} nullable={}",
                    g.name(),
                    g.data_type(),
                    g.is_nullable(),
                    e.name(),
                    e.data_type(),
                    e.is_nullable()
                )));
            }
        }
        let bad = |row: usize, field: &str, reason: String| StudyError::BadValue {
            row,
            field: field.to_string(),
            reason,
        };
        let strings = |i: usize, name: &str| -> Result<&StringArray, StudyError> {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| StudyError::SchemaMismatch(format!("column `{name}` is not Utf8")))
        };
        let donor = strings(0, DONOR_COLUMN)?;
        let period = strings(1, PERIOD_COLUMN)?;
        for row in 0..batch.num_rows() {
            if donor.is_null(row) {
                return Err(bad(row, DONOR_COLUMN, "null".into()));
            }
            let d = donor.value(row);
            if !crate::pseudonym::is_pseudonym_hex(d) {
                return Err(bad(row, DONOR_COLUMN, "not 64 lowercase hex digits".into()));
            }
            if pseudonym.is_some_and(|p| p != d) {
                return Err(bad(
                    row,
                    DONOR_COLUMN,
                    "differs from the manifest's pseudonym".into(),
                ));
            }
            if period.is_null(row) || !self.period.is_valid_period(period.value(row)) {
                return Err(bad(
                    row,
                    PERIOD_COLUMN,
                    format!("not a {:?} period", self.period),
                ));
            }
        }
        let mut any_measure = vec![false; batch.num_rows()];
        for (idx, f) in self.fields.iter().enumerate() {
            let col: &ArrayRef = batch.column(idx + 2);
            if !expected.field(idx + 2).is_nullable() && col.null_count() > 0 {
                let row = (0..col.len()).find(|r| col.is_null(*r)).unwrap_or(0);
                return Err(bad(row, &f.name, "null in a required column".into()));
            }
            match f.field_type() {
                FieldType::Number { min, max } => {
                    let a = col.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
                        StudyError::SchemaMismatch(format!("column `{}` is not Float64", f.name))
                    })?;
                    for (row, v) in a.iter().enumerate() {
                        if let Some(v) = v {
                            if !(v.is_finite() && min <= v && v <= max) {
                                return Err(bad(
                                    row,
                                    &f.name,
                                    format!("{v} is outside [{min}, {max}]"),
                                ));
                            }
                            if f.role == Role::Measure {
                                if let Some(slot) = any_measure.get_mut(row) {
                                    *slot = true;
                                }
                            }
                        }
                    }
                }
                FieldType::Flag => {
                    col.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
                        StudyError::SchemaMismatch(format!("column `{}` is not Boolean", f.name))
                    })?;
                }
                FieldType::Category(allowed) => {
                    let a = strings(idx + 2, &f.name)?;
                    for (row, v) in a.iter().enumerate() {
                        let v = v.unwrap_or_default();
                        if !allowed.iter().any(|x| x == v) {
                            let shown: String = v.chars().take(32).collect();
                            return Err(bad(
                                row,
                                &f.name,
                                format!("{shown:?} is not one of the study's values"),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(row) = any_measure.iter().position(|m| !m) {
            return Err(bad(row, "*", "row carries no measure".into()));
        }
        Ok(())
    }
}

fn is_code(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_field_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s != DONOR_COLUMN
        && s != PERIOD_COLUMN
        && s != CONSENT_COLUMN
}

/// Encode rows as an Arrow IPC stream (the envelope's row encoding).
pub fn rows_to_ipc(batch: &RecordBatch) -> Result<Vec<u8>, StudyError> {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
            .map_err(|e| StudyError::Ipc(e.to_string()))?;
        w.write(batch).map_err(|e| StudyError::Ipc(e.to_string()))?;
        w.finish().map_err(|e| StudyError::Ipc(e.to_string()))?;
    }
    Ok(out)
}

/// For each column type rows may use, the size every buffer after the validity bitmap must be
/// a multiple of (offsets are 4 or 8 bytes wide, fixed-width values their width; 1: any).
fn buffer_widths(dt: &DataType) -> Option<&'static [usize]> {
    Some(match dt {
        DataType::Utf8 | DataType::Binary => &[4, 1],
        DataType::LargeUtf8 | DataType::LargeBinary => &[8, 1],
        DataType::Boolean | DataType::Int8 | DataType::UInt8 => &[1],
        DataType::Int16 | DataType::UInt16 | DataType::Float16 => &[2],
        DataType::Int32 | DataType::UInt32 | DataType::Float32 => &[4],
        DataType::Int64 | DataType::UInt64 | DataType::Float64 => &[8],
        _ => return None,
    })
}

/// Walk the messages of an IPC stream before the Arrow decoder sees it, refusing what that
/// decoder asserts on instead of returning an error: metadata or a body beyond the stream, a
/// buffer outside its message body, a buffer whose length is not a whole number of its values
/// (offsets, fixed-width values), and compressed batches. Column types other than flat strings,
/// numbers and booleans are a schema mismatch here already (no study uses them).
fn check_ipc_layout(bytes: &[u8]) -> Result<(), StudyError> {
    let bad = |m: &str| StudyError::Ipc(m.to_string());
    let mut pos = 0usize;
    let mut widths: Option<Vec<&'static [usize]>> = None;
    loop {
        let word = |at: usize| -> Result<u32, StudyError> {
            let b = bytes
                .get(at..at + 4)
                .ok_or_else(|| bad("stream ends inside a message prefix"))?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if pos == bytes.len() {
            return Ok(()); // a stream may end without the end-of-stream marker
        }
        let mut len = word(pos)?;
        pos += 4;
        if len == 0xFFFF_FFFF {
            len = word(pos)?;
            pos += 4;
        }
        if len == 0 {
            // End of stream: nothing may follow the marker.
            if pos != bytes.len() {
                return Err(bad("bytes after the end-of-stream marker"));
            }
            return Ok(());
        }
        let meta_end = pos
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("message metadata beyond the end of the stream"))?;
        let msg = arrow::ipc::root_as_message(&bytes[pos..meta_end])
            .map_err(|e| StudyError::Ipc(format!("message metadata: {e}")))?;
        let body_len =
            usize::try_from(msg.bodyLength()).map_err(|_| bad("negative message body length"))?;
        let body_end = meta_end
            .checked_add(body_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("message body beyond the end of the stream"))?;
        if let Some(schema) = msg.header_as_schema() {
            if widths.is_some() {
                return Err(bad("a second schema message"));
            }
            let schema = arrow::ipc::convert::try_fb_to_schema(schema)
                .map_err(|e| StudyError::Ipc(format!("schema message: {e}")))?;
            let mut w = Vec::new();
            for f in schema.fields() {
                w.push(buffer_widths(f.data_type()).ok_or_else(|| {
                    StudyError::SchemaMismatch(format!(
                        "column `{}` is {:?}; rows hold strings, numbers and booleans only",
                        f.name(),
                        f.data_type()
                    ))
                })?);
            }
            widths = Some(w);
        }
        if msg.header_as_dictionary_batch().is_some() {
            return Err(StudyError::SchemaMismatch(
                "dictionary-encoded columns are not accepted".into(),
            ));
        }
        if let Some(batch) = msg.header_as_record_batch() {
            let widths = widths
                .as_ref()
                .ok_or_else(|| bad("a record batch before the schema"))?;
            if batch.compression().is_some() {
                return Err(bad("compressed batches are not accepted"));
            }
            let buffers: Vec<_> = batch.buffers().into_iter().flatten().collect();
            for b in &buffers {
                let inside = usize::try_from(b.offset())
                    .ok()
                    .zip(usize::try_from(b.length()).ok())
                    .and_then(|(o, l)| o.checked_add(l))
                    .is_some_and(|end| end <= body_len);
                if !inside {
                    return Err(bad("a buffer lies outside its message body"));
                }
            }
            // Validity bitmap, then the column's own buffers, column after column.
            let mut i = 0usize;
            for w in widths {
                i += 1;
                for &width in *w {
                    let Some(b) = buffers.get(i) else {
                        return Err(bad("fewer buffers than the schema needs"));
                    };
                    if b.length() % width as i64 != 0 {
                        return Err(bad("a buffer is not a whole number of its values"));
                    }
                    i += 1;
                }
            }
        }
        pos = body_end;
    }
}

/// Decode an Arrow IPC stream of untrusted bytes into one batch, at most `max_rows` rows.
///
/// The stream's message layout is checked first (see `check_ipc_layout`), then the decoder runs with full validation. The Arrow decoder
/// has had panicking paths on malformed input; as defence in depth a panic inside it is caught
/// and reported as [`StudyError::Ipc`] rather than taking the process down.
pub fn rows_from_ipc(bytes: &[u8], max_rows: usize) -> Result<RecordBatch, StudyError> {
    check_ipc_layout(bytes)?;
    let decode = || -> Result<RecordBatch, StudyError> {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| StudyError::Ipc(e.to_string()))?;
        let schema = reader.schema();
        let mut batches = Vec::new();
        let mut rows = 0usize;
        for b in reader {
            let b = b.map_err(|e| StudyError::Ipc(e.to_string()))?;
            rows = rows.saturating_add(b.num_rows());
            if rows > max_rows {
                return Err(StudyError::TooManyRows {
                    rows,
                    limit: max_rows,
                });
            }
            batches.push(b);
        }
        arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| StudyError::Ipc(e.to_string()))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(r) => r,
        Err(_) => Err(StudyError::Ipc("malformed stream".into())),
    }
}
