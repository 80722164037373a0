//! The import report: what was read, what was emitted, and why everything else was not. Also the
//! crate-internal `Collector` through which importers emit items and count outcomes, so the accounting rule
//! ("every record is emitted or skipped for exactly one reason") lives in one place.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{ImportError, ItemSink, Limits, RecordLocation, RecordRef, SourceItem};

/// Why a record (or a panel component) produced no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SkipReason {
    /// A FHIR resource type, Synthea table or Apple element this importer does not read (Encounter, Claim,
    /// Workout, ActivitySummary, ExportDate, ...). Counted by type in [`ImportReport::resources`].
    UnsupportedResourceType,
    /// A FHIR `Medication` resource: not an item itself; its code is used by the `MedicationRequest`s that
    /// reference it.
    ReferenceOnly,
    /// An Apple `<Correlation>`, or a FHIR `Bundle` or `List` inside a file: a container; its member
    /// records are counted on their own.
    Container,
    /// A `Record` inside an Apple `<Correlation>` that duplicates a top-level record with the same type,
    /// start and source (see
    /// [`ImportOptions::emit_apple_correlation_members`](super::ImportOptions::emit_apple_correlation_members)).
    CorrelationMember,
    /// No code at all (no coding, empty `CODE`, no `type`).
    MissingCode,
    /// A code under a known system that is not a valid code of that system (e.g. an OpenMRS concept id
    /// labelled as LOINC).
    InvalidCode,
    /// An observation whose answer is itself a direct identifier (the patient's address); never emitted.
    IdentifyingObservation,
    /// The source marks the record `entered-in-error`.
    EnteredInError,
    /// A condition whose verification status is `refuted`.
    Refuted,
    /// An observation without a value (and without components).
    MissingValue,
    /// A panel (e.g. the `85353-1` vital-signs panel) that only groups other observations through
    /// `hasMember`/`derivedFrom` and has no value or component of its own.
    PanelWithoutValue,
    /// A value type the output model cannot hold (FHIR `valueRange`, `valueRatio`, `valueSampledData`, ...).
    UnsupportedValueType,
    /// A value that should be a number and is not.
    UnparsableValue,
    /// A quantity with a comparator (`<`, `>=`, ...), which a plain number would misstate.
    ValueWithComparator,
    /// A quantity without a unit.
    MissingUnit,
    /// A date that is present but not a date.
    UnparsableDate,
    /// A `MedicationRequest.medicationReference` that does not resolve inside the file.
    UnresolvedMedicationReference,
    /// A FHIR `List` entry that refers to a resource the file does not hold.
    ReferenceOutsideFile,
    /// A record that is not structurally what the format requires (an entry that is not an object, a CSV
    /// row with the wrong number of fields, invalid UTF-8, an NDJSON line that is not JSON, ...).
    MalformedRecord,
}

impl SkipReason {
    /// Whether this reason signals a problem with the data (and so gets sample problems in the report),
    /// rather than a deliberate, expected skip.
    pub fn is_problem(self) -> bool {
        !matches!(
            self,
            SkipReason::UnsupportedResourceType
                | SkipReason::ReferenceOnly
                | SkipReason::Container
                | SkipReason::CorrelationMember
                | SkipReason::IdentifyingObservation
                | SkipReason::EnteredInError
                | SkipReason::Refuted
                | SkipReason::PanelWithoutValue
        )
    }

    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::UnsupportedResourceType => "unsupported resource type",
            SkipReason::ReferenceOnly => "only used through references",
            SkipReason::Container => "container of other records",
            SkipReason::CorrelationMember => "duplicate of a top-level record",
            SkipReason::MissingCode => "missing code",
            SkipReason::InvalidCode => "invalid code for its system",
            SkipReason::IdentifyingObservation => "answer is a direct identifier",
            SkipReason::EnteredInError => "entered in error",
            SkipReason::Refuted => "refuted",
            SkipReason::MissingValue => "missing value",
            SkipReason::PanelWithoutValue => "panel without value",
            SkipReason::UnsupportedValueType => "unsupported value type",
            SkipReason::UnparsableValue => "unparsable value",
            SkipReason::ValueWithComparator => "quantity with comparator",
            SkipReason::MissingUnit => "missing unit",
            SkipReason::UnparsableDate => "unparsable date",
            SkipReason::UnresolvedMedicationReference => "unresolved medication reference",
            SkipReason::ReferenceOutsideFile => "reference to a resource outside the file",
            SkipReason::MalformedRecord => "malformed record",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Something worth knowing about a record that does not by itself stop it from being emitted. Counted when
/// found, so a record can carry a note and still be skipped later for another reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Note {
    /// A system URI that is not the canonical one but was recognised (Synthea's `http://loinc`).
    NonCanonicalSystemUri,
    /// A LOINC or SNOMED CT code whose check digit is wrong; emitted as written (Synthea's own
    /// `10939881000119104`, for instance).
    CheckDigitMismatch,
    /// A partial date (`1972`, `1972-06`); the item's date is `None`.
    ImpreciseDate,
    /// A date given in a form other than a date-time (FHIR `onsetAge`, `onsetString`, `effectiveTiming`); the
    /// item's date is `None`.
    UnsupportedDateForm,
    /// A patient's birth date that is not a date; the demographics are emitted with `birth_date: None`.
    UnparsableBirthDate,
    /// A sex/gender value that is not recognised; `sex: None`.
    UnrecognisedSex,
    /// A subject reference that names no patient by id (conditional `Patient?identifier=...`, a Group, a
    /// contained resource); the item's `patient` is `None`.
    UnresolvedSubject,
}

impl Note {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            Note::NonCanonicalSystemUri => "non-canonical system URI",
            Note::CheckDigitMismatch => "code check digit mismatch",
            Note::ImpreciseDate => "imprecise date dropped",
            Note::UnsupportedDateForm => "date form not supported, dropped",
            Note::UnparsableBirthDate => "unparsable birth date dropped",
            Note::UnrecognisedSex => "unrecognised sex value",
            Note::UnresolvedSubject => "subject is not a patient id",
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The kind of a sampled problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// The whole record was skipped.
    Skipped(SkipReason),
    /// One component of a panel was skipped.
    ComponentSkipped(SkipReason),
    /// The record was emitted with a note.
    Note(Note),
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Skipped(reason) => write!(f, "skipped: {reason}"),
            ProblemKind::ComponentSkipped(reason) => write!(f, "component skipped: {reason}"),
            ProblemKind::Note(note) => write!(f, "note: {note}"),
        }
    }
}

/// One sampled problem, with its location and field. Its detail may quote source text (truncated), so
/// reports stay on the donor's device like the source itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub location: RecordLocation,
    /// Which field or column (`VALUE`, `valueQuantity.value`, `component[1].code`, `startDate`).
    pub field: String,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// What exactly, e.g. `not a number "abc"`.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field {}: {} ({})",
            self.location,
            Esc(&self.field),
            Esc(&self.detail),
            self.kind
        )
    }
}

/// Items emitted, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemCounts {
    /// [`SourceItem::Demographics`] items.
    pub demographics: u64,
    /// [`SourceItem::Observation`] items (one per component for panels).
    pub observations: u64,
    /// [`SourceItem::Condition`] items.
    pub conditions: u64,
    /// [`SourceItem::Medication`] items.
    pub medications: u64,
}

impl ItemCounts {
    /// All items.
    pub fn total(&self) -> u64 {
        self.demographics + self.observations + self.conditions + self.medications
    }
}

/// What an import read and did. Invariant (see [`ImportReport::is_balanced`]): every record counted in
/// `resources` is either in `records_emitting` or in exactly one `skipped` reason.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportReport {
    /// The files read, in order (a zip member as `archive.zip!/member.xml`).
    pub files: Vec<String>,
    /// Files in an imported directory that are not a supported table (`encounters.csv`, ...).
    pub ignored_files: Vec<String>,
    /// Records read, by type: FHIR resource type (`Observation`, `Encounter`, ...), the resource type a
    /// Synthea table holds (`Patient`, `Observation`, `Condition`, `MedicationRequest`), or the Apple element
    /// (`Record`, `Me`, `Workout`, `Correlation`, `Correlation/Record`, ...). Records whose type cannot be
    /// read are counted as `(unknown)`.
    pub resources: BTreeMap<String, u64>,
    /// Records that produced at least one item.
    pub records_emitting: u64,
    /// Items emitted, by kind.
    pub emitted: ItemCounts,
    /// Records that produced no item, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Individual panel components that produced no item, by reason (whether or not their record emitted
    /// other components).
    pub skipped_components: BTreeMap<SkipReason, u64>,
    /// Things worth knowing about records (see [`Note`]), by note.
    pub notes: BTreeMap<Note, u64>,
    /// Up to [`Limits::max_samples`] problems, at most [`Limits::max_samples_per_kind`] per kind, in the
    /// order met.
    pub samples: Vec<Problem>,
    /// Problems not sampled because of those limits.
    pub samples_omitted: u64,
}

impl ImportReport {
    /// All records read.
    pub fn records_total(&self) -> u64 {
        self.resources.values().sum()
    }

    /// All skipped records.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Records read of one type.
    pub fn resource_count(&self, kind: &str) -> u64 {
        self.resources.get(kind).copied().unwrap_or(0)
    }

    /// Records skipped for one reason.
    pub fn skipped_count(&self, reason: SkipReason) -> u64 {
        self.skipped.get(&reason).copied().unwrap_or(0)
    }

    /// Components skipped for one reason.
    pub fn skipped_component_count(&self, reason: SkipReason) -> u64 {
        self.skipped_components.get(&reason).copied().unwrap_or(0)
    }

    /// Records with one note.
    pub fn note_count(&self, note: Note) -> u64 {
        self.notes.get(&note).copied().unwrap_or(0)
    }

    /// Whether every record read is accounted for: emitted, or skipped for exactly one reason.
    pub fn is_balanced(&self) -> bool {
        self.records_total() == self.records_emitting + self.skipped_total()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "files: {}", Esc(&self.files.join(", ")))?;
        if !self.ignored_files.is_empty() {
            writeln!(f, "ignored files: {}", Esc(&self.ignored_files.join(", ")))?;
        }
        writeln!(f, "records read: {}", self.records_total())?;
        for (kind, n) in &self.resources {
            writeln!(f, "  {}: {n}", Esc(kind))?;
        }
        let e = &self.emitted;
        writeln!(
            f,
            "records emitting: {} (items: {} demographics, {} observations, {} conditions, {} medications)",
            self.records_emitting, e.demographics, e.observations, e.conditions, e.medications
        )?;
        writeln!(f, "records skipped: {}", self.skipped_total())?;
        for (reason, n) in &self.skipped {
            writeln!(f, "  {reason}: {n}")?;
        }
        if !self.skipped_components.is_empty() {
            writeln!(f, "components skipped:")?;
            for (reason, n) in &self.skipped_components {
                writeln!(f, "  {reason}: {n}")?;
            }
        }
        if !self.notes.is_empty() {
            writeln!(f, "notes:")?;
            for (note, n) in &self.notes {
                writeln!(f, "  {note}: {n}")?;
            }
        }
        if !self.samples.is_empty() {
            writeln!(f, "sample problems:")?;
            for problem in &self.samples {
                writeln!(f, "  {problem}")?;
            }
            if self.samples_omitted > 0 {
                writeln!(f, "  ... and {} more", self.samples_omitted)?;
            }
        }
        Ok(())
    }
}

/// Why one record or component produced no item; returned by the per-record functions.
#[derive(Debug, Clone)]
pub(crate) struct Skip {
    pub(crate) reason: SkipReason,
    pub(crate) field: Cow<'static, str>,
    pub(crate) detail: String,
}

impl Skip {
    pub(crate) fn new(
        reason: SkipReason,
        field: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let field = match escape_controls(&field) {
            Cow::Borrowed(_) => field,
            Cow::Owned(escaped) => Cow::Owned(escaped),
        };
        let detail: String = detail.into();
        Skip {
            reason,
            field,
            detail: escape_controls(&detail).into_owned(),
        }
    }
}

/// Whether a character of source text must not reach a terminal as it is: control characters
/// (C0, DEL, C1: `ESC` starts the escape sequences that recolour, move the cursor or retitle the
/// window) and the bidirectional formatting characters that reorder what is shown.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' | '\r' | '\t' => out.extend(c.escape_debug()),
        _ => out.extend(c.escape_unicode()),
    }
}

/// The one escaping function for text taken from a source file (ids, codes, units, element names,
/// values, member names) before it is put into an error, a report or any other message: control
/// and bidirectional formatting characters become `\u{1b}`, `\n`, `\u{202e}`, ...; everything
/// else, printable Unicode included, is kept. Escaped text contains no such characters, so
/// escaping it again changes nothing.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Displays a string through [`escape_controls`].
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_controls(self.0))
    }
}

/// Quotes source text for a problem detail, truncated to a few dozen characters; quotes,
/// backslashes and everything [`escape_controls`] escapes are escaped.
pub(crate) fn quoted(text: &str) -> String {
    const MAX_CHARS: usize = 48;
    let mut out = String::with_capacity(text.len().min(MAX_CHARS) + 4);
    out.push('"');
    let mut chars = text.chars();
    for c in chars.by_ref().take(MAX_CHARS) {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out.push('"');
    out
}

/// Counts outcomes and forwards items to the sink.
pub(crate) struct Collector<'s, 'a> {
    report: ImportReport,
    sink: &'s mut ItemSink<'a>,
    limits: Limits,
    file: Arc<str>,
    sampled: BTreeMap<ProblemKind, usize>,
}

impl<'s, 'a> Collector<'s, 'a> {
    pub(crate) fn new(limits: Limits, sink: &'s mut ItemSink<'a>) -> Self {
        Collector {
            report: ImportReport::default(),
            sink,
            limits,
            file: Arc::from(""),
            sampled: BTreeMap::new(),
        }
    }

    /// Starts a new file; later locations name it.
    pub(crate) fn start_file(&mut self, file: &str) {
        self.file = Arc::from(file);
        self.report.files.push(file.to_owned());
    }

    pub(crate) fn ignore_file(&mut self, file: String) {
        self.report.ignored_files.push(file);
    }

    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn location(&self, record: RecordRef) -> RecordLocation {
        RecordLocation {
            file: Arc::clone(&self.file),
            record,
        }
    }

    /// Counts a record of `kind`. Must be followed by exactly one `record_emitted` or `skip`.
    pub(crate) fn seen(&mut self, kind: &str) {
        let kind = escape_controls(kind);
        let kind = kind.as_ref();
        if let Some(n) = self.report.resources.get_mut(kind) {
            *n += 1;
        } else {
            self.report.resources.insert(kind.to_owned(), 1);
        }
    }

    /// Hands one item to the sink.
    pub(crate) fn emit(&mut self, item: SourceItem) -> Result<(), ImportError> {
        let counts = &mut self.report.emitted;
        match &item {
            SourceItem::Demographics(_) => counts.demographics += 1,
            SourceItem::Observation(_) => counts.observations += 1,
            SourceItem::Condition(_) => counts.conditions += 1,
            SourceItem::Medication(_) => counts.medications += 1,
        }
        (self.sink)(item)
    }

    /// The current record produced at least one item.
    pub(crate) fn record_emitted(&mut self) {
        self.report.records_emitting += 1;
    }

    /// The current record produced no item.
    pub(crate) fn skip(&mut self, at: RecordRef, skip: Skip) {
        *self.report.skipped.entry(skip.reason).or_insert(0) += 1;
        if skip.reason.is_problem() {
            self.sample(
                at,
                ProblemKind::Skipped(skip.reason),
                skip.field,
                skip.detail,
            );
        }
    }

    /// One component of the current record produced no item.
    pub(crate) fn skip_component(&mut self, at: RecordRef, skip: Skip) {
        *self
            .report
            .skipped_components
            .entry(skip.reason)
            .or_insert(0) += 1;
        if skip.reason.is_problem() {
            self.sample(
                at,
                ProblemKind::ComponentSkipped(skip.reason),
                skip.field,
                skip.detail,
            );
        }
    }

    /// Something worth knowing about the current record.
    pub(crate) fn note(
        &mut self,
        at: RecordRef,
        note: Note,
        field: impl Into<Cow<'static, str>>,
        detail: String,
    ) {
        *self.report.notes.entry(note).or_insert(0) += 1;
        self.sample(at, ProblemKind::Note(note), field.into(), detail);
    }

    fn sample(
        &mut self,
        at: RecordRef,
        kind: ProblemKind,
        field: Cow<'static, str>,
        detail: String,
    ) {
        let per_kind = self.sampled.entry(kind).or_insert(0);
        if self.report.samples.len() >= self.limits.max_samples
            || *per_kind >= self.limits.max_samples_per_kind
        {
            self.report.samples_omitted += 1;
            return;
        }
        *per_kind += 1;
        let location = self.location(at);
        self.report.samples.push(Problem {
            location,
            field: escape_controls(&field).into_owned(),
            kind,
            detail: escape_controls(&detail).into_owned(),
        });
    }

    pub(crate) fn finish(self) -> ImportReport {
        self.report
    }
}
