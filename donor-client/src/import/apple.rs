//! Apple Health importer: `export.xml` streamed with quick-xml, and `export.zip` streamed from the archive
//! member without extracting it.
//!
//! - `<Me HKCharacteristicTypeIdentifierDateOfBirth=.. HKCharacteristicTypeIdentifierBiologicalSex=..>` →
//!   [`Demographics`] (no names or identifiers exist in an Apple export; `patient` is `None` throughout).
//! - `<Record type= unit= value= startDate=>` → [`SourceObservation`] with [`CodeSystem::AppleHealthKit`] and
//!   the HealthKit type as code, `startDate` as the effective time. `HKQuantityType…` records need a numeric
//!   `value` and a `unit`; other records (categories such as sleep, with values like
//!   `HKCategoryValueSleepAnalysisAsleepCore`) become [`SourceValue::Text`], or [`SourceValue::None`] without
//!   a value. `device` and metadata are never read; `sourceName` only to recognise duplicates (below), and
//!   it is never emitted.
//! - `<Correlation>` (blood pressure, food) is counted as a container; its member `Record`s are counted as
//!   `Correlation/Record`. Apple's exports usually repeat each member as a top-level `Record`, but not
//!   always (exports written by other apps, older iOS versions). So a member is emitted unless a
//!   top-level `Record` with the same `type`, `startDate` and `sourceName` exists anywhere in the file,
//!   in which case it is skipped as [`SkipReason::CorrelationMember`]. Members are compared with the
//!   top-level records read before them at once and held back (at most [`Limits::max_reference_table`])
//!   until the end of the document for those that come later; top-level blood-pressure and dietary
//!   records are remembered as 16-byte digests, at most [`Limits::max_correlation_keys`]. Past either
//!   cap a member is skipped as a presumed duplicate, as Apple's DTD states. With
//!   [`ImportOptions::emit_apple_correlation_members`] every member is emitted unchecked.
//! - `<Workout>`, `<ActivitySummary>`, `<ExportDate>`, `<ClinicalRecord>`, `<Audiogram>`, ... are counted by
//!   element name and skipped.
//!
//! # The DOCTYPE
//!
//! Exports carry an internal DTD (`<!DOCTYPE HealthData [ ... ]>`). The one written by iOS 16 is malformed
//! (`<!ATTLIST` declarations missing their closing `>`), which strict parsers reject and which also defeats
//! quick-xml's own `<`/`>` balancing. So the prolog is read here first, before quick-xml sees the stream:
//! the DOCTYPE is located without being validated (its internal subset ends at the first `]` followed by
//! optional whitespace and `>`) and overwritten in place with spaces, keeping its newlines so that line
//! numbers and byte offsets still match the file.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::XmlVersion;

use super::codes::{self, CodeCheck};
use super::dates::{self, SourceDate};
use super::metered::{Meter, Metered};
use super::report::{escape_controls, quoted, Collector, Skip};
use super::{
    Code, CodeSystem, Demographics, ImportError, ImportOptions, ImportReport, ItemSink, Limits,
    Note, RecordRef, Sex, SkipReason, SourceItem, SourceObservation, SourceValue,
};

/// Imports an Apple Health `export.xml` from a buffered reader; `file` names it in locations and errors.
pub fn import_xml<R: BufRead>(
    reader: R,
    file: &str,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let mut collector = Collector::new(options.limits, sink);
    collector.start_file(file);
    read_xml(reader, &mut collector, options)?;
    Ok(collector.finish())
}

/// Imports an Apple Health `export.zip`: the member read is the largest `.xml` entry, other than
/// `export_cda.xml`, whose first [`Limits::max_zip_sniff_bytes`] contain `<HealthData` (so localised names
/// such as `apple_health_export/eksport.xml` are found). It is decompressed as a stream, never extracted.
/// Locations name it `file!/member`.
pub fn import_zip<R: Read + Seek>(
    reader: R,
    file: &str,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|err| zip_error(file, err))?;
    let index = find_export_member(&mut archive, options.limits.max_zip_sniff_bytes)
        .map_err(|err| zip_error(file, err))?
        .ok_or_else(|| ImportError::UnexpectedFormat {
            file: file.to_owned(),
            at: None,
            field: None,
            detail: "no Apple Health export in the archive (no .xml member containing <HealthData)"
                .into(),
        })?;
    let member = archive
        .by_index(index)
        .map_err(|err| zip_error(file, err))?;
    let name = format!("{file}!/{}", member.name());
    let mut collector = Collector::new(options.limits, sink);
    collector.start_file(&name);
    read_xml(
        BufReader::with_capacity(256 * 1024, member),
        &mut collector,
        options,
    )?;
    Ok(collector.finish())
}

/// The index of the archive's Apple export member, if any (see [`import_zip`]).
fn find_export_member<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    sniff_bytes: u64,
) -> Result<Option<usize>, zip::result::ZipError> {
    let mut candidates = Vec::new();
    for i in 0..archive.len() {
        let member = archive.by_index_raw(i)?;
        let base = member.name().rsplit('/').next().unwrap_or("");
        let is_xml =
            base.len() > 4 && base.as_bytes()[base.len() - 4..].eq_ignore_ascii_case(b".xml");
        if member.is_dir() || !is_xml || base.eq_ignore_ascii_case("export_cda.xml") {
            continue;
        }
        candidates.push((member.size(), i));
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in candidates {
        let mut head = Vec::new();
        archive
            .by_index(i)?
            .take(sniff_bytes)
            .read_to_end(&mut head)?;
        if head
            .windows(b"<HealthData".len())
            .any(|w| w == b"<HealthData")
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn zip_error(file: &str, err: zip::result::ZipError) -> ImportError {
    match err {
        zip::result::ZipError::Io(source) => ImportError::Io {
            file: file.to_owned(),
            at: None,
            source,
        },
        other => ImportError::UnexpectedFormat {
            file: file.to_owned(),
            at: None,
            field: None,
            detail: format!("not a readable zip archive: {other}"),
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// Prolog

/// Result of scanning the prolog read so far.
enum Scan {
    /// The root element (or non-markup content) starts; the prolog is complete.
    Root,
    /// More input is needed; resume scanning at `resume`, inside `inside` (for the truncation message).
    NeedMore { resume: usize, inside: &'static str },
}

/// Reads the XML declaration, comments and DOCTYPE into memory, blanking the DOCTYPE (see the module docs).
fn read_prolog<R: BufRead>(
    reader: &mut R,
    limits: &Limits,
    file: &str,
) -> Result<Vec<u8>, ImportError> {
    let mut head = Vec::new();
    let mut resume = 0;
    loop {
        let inside = match scan_prolog(&mut head, resume) {
            Scan::Root => return Ok(head),
            Scan::NeedMore { resume: at, inside } => {
                resume = at;
                inside
            }
        };
        if head.len() as u64 > limits.max_xml_prolog_bytes {
            return Err(ImportError::LimitExceeded {
                file: file.to_owned(),
                at: None,
                what: "the XML prolog (declaration and DOCTYPE)",
                limit: limits.max_xml_prolog_bytes,
            });
        }
        let chunk = reader.fill_buf().map_err(|source| ImportError::Io {
            file: file.to_owned(),
            at: None,
            source,
        })?;
        if chunk.is_empty() {
            if head.iter().all(u8::is_ascii_whitespace) {
                return Err(ImportError::UnexpectedFormat {
                    file: file.to_owned(),
                    at: None,
                    field: None,
                    detail: "the file is empty: not an Apple Health export".into(),
                });
            }
            if inside.is_empty() {
                return Ok(head);
            }
            let line = 1 + head.iter().filter(|&&b| b == b'\n').count() as u64;
            return Err(ImportError::Truncated {
                file: file.to_owned(),
                at: Some(RecordRef::XmlElement {
                    line,
                    byte_offset: head.len() as u64,
                }),
                detail: format!("end of file inside {inside}"),
            });
        }
        let take = chunk.len().min(64 * 1024);
        head.extend_from_slice(&chunk[..take]);
        reader.consume(take);
    }
}

fn scan_prolog(head: &mut [u8], mut i: usize) -> Scan {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if i == 0 && head.starts_with(BOM) {
        i = BOM.len();
    }
    loop {
        while head.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let rest = &head[i.min(head.len())..];
        let need_more = |inside| Scan::NeedMore { resume: i, inside };
        if rest.is_empty() {
            return need_more("");
        }
        if rest[0] != b'<' {
            return Scan::Root;
        }
        let is_prefix = |token: &[u8]| rest.len() < token.len() && token.starts_with(rest);
        if rest.len() < 2 || is_prefix(b"<!--") || is_prefix(b"<!DOCTYPE") {
            return need_more("markup");
        }
        if rest.starts_with(b"<?") {
            match find(rest, b"?>", 2) {
                Some(end) => i += end + 2,
                None => return need_more("the XML declaration"),
            }
        } else if rest.starts_with(b"<!--") {
            match find(rest, b"-->", 4) {
                Some(end) => i += end + 3,
                None => return need_more("a comment"),
            }
        } else if rest.starts_with(b"<!DOCTYPE") {
            match doctype_len(rest) {
                Some(len) => {
                    for b in &mut head[i..i + len] {
                        if *b != b'\n' {
                            *b = b' ';
                        }
                    }
                    i += len;
                }
                None => return need_more("the DOCTYPE declaration"),
            }
        } else {
            return Scan::Root;
        }
    }
}

/// Position of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Length of the DOCTYPE declaration at the start of `d`, if complete: up to the first `>` when there is no
/// internal subset, else up to the first `]` that is followed by optional whitespace and `>`.
fn doctype_len(d: &[u8]) -> Option<usize> {
    let open = b"<!DOCTYPE".len();
    let j = d
        .get(open..)?
        .iter()
        .position(|&b| b == b'[' || b == b'>')?
        + open;
    if d[j] == b'>' {
        return Some(j + 1);
    }
    let mut k = j + 1;
    loop {
        let close = d.get(k..)?.iter().position(|&b| b == b']')? + k;
        let mut q = close + 1;
        while d.get(q).is_some_and(u8::is_ascii_whitespace) {
            q += 1;
        }
        match d.get(q) {
            Some(b'>') => return Some(q + 1),
            Some(_) => k = close + 1,
            None => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Body

fn read_xml<R: BufRead>(
    mut reader: R,
    c: &mut Collector<'_, '_>,
    options: &ImportOptions,
) -> Result<(), ImportError> {
    let limits = *c.limits();
    let head = read_prolog(&mut reader, &limits, c.file())?;
    let meter = Meter::new(limits.max_record_bytes);
    let mut xml = quick_xml::Reader::from_reader(Metered::new(
        Cursor::new(head).chain(reader),
        meter.clone(),
    ));
    // Since quick-xml 0.38 a `&` in text starts a reference (`Event::GeneralRef`) and a lone `&` is an
    // error by default; text is never read here, so a stray `&` in it stays harmless, as it always was.
    xml.config_mut().allow_dangling_amp = true;
    let mut buf = Vec::with_capacity(4 * 1024);
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut in_correlation = false;
    let mut members = Members::new(&limits);
    loop {
        buf.clear();
        meter.mark();
        let event = match xml.read_event_into(&mut buf) {
            Ok(event) => event,
            Err(err) => return Err(xml_error(err, &xml, &meter, c, &limits)),
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                let at = element_position(&xml, &meter, e, is_empty);
                let name = e.name();
                let name = name.as_ref();
                if !root_seen {
                    if name != b"HealthData" {
                        return Err(ImportError::UnexpectedFormat {
                            file: c.file().to_owned(),
                            at: Some(at),
                            field: None,
                            detail: format!(
                                "the root element is <{}>, not <HealthData>: not an Apple Health export",
                                escape_controls(&String::from_utf8_lossy(name))
                            ),
                        });
                    }
                    root_seen = true;
                    if is_empty {
                        break;
                    }
                } else if depth == 1 {
                    match name {
                        b"Record" => {
                            c.seen("Record");
                            let outcome = match record_attributes(e) {
                                Err(skip) => Err(skip),
                                Ok(attrs) => {
                                    members.top_level(c, &attrs);
                                    match observation(c, at, attrs) {
                                        Ok(o) => c.emit(SourceItem::Observation(o)).map(Ok)?,
                                        Err(skip) => Err(skip),
                                    }
                                }
                            };
                            account(c, at, outcome);
                        }
                        b"Me" => {
                            c.seen("Me");
                            let outcome = me(c, at, e)?;
                            account(c, at, outcome);
                        }
                        b"Correlation" => {
                            c.seen("Correlation");
                            c.skip(at, Skip::new(SkipReason::Container, "Correlation", ""));
                            in_correlation = !is_empty;
                        }
                        other => {
                            c.seen(&String::from_utf8_lossy(other));
                            c.skip(
                                at,
                                Skip::new(SkipReason::UnsupportedResourceType, "element", ""),
                            );
                        }
                    }
                } else if depth == 2 && in_correlation && name == b"Record" {
                    c.seen("Correlation/Record");
                    match record_attributes(e) {
                        Err(skip) => c.skip(at, skip),
                        Ok(attrs) if options.emit_apple_correlation_members => {
                            let outcome = match observation(c, at, attrs) {
                                Ok(o) => c.emit(SourceItem::Observation(o)).map(Ok)?,
                                Err(skip) => Err(skip),
                            };
                            account(c, at, outcome);
                        }
                        Ok(attrs) => members.member(c, at, attrs),
                    }
                }
                if !is_empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth <= 1 {
                    in_correlation = false;
                }
                if depth == 0 {
                    members.finish(c)?;
                    break;
                }
            }
            Event::Text(ref text) if !root_seen && !text.iter().all(u8::is_ascii_whitespace) => {
                return Err(text_before_root(c, &meter, &xml));
            }
            // An entity or character reference in text (`&amp;`, `&#10;`) is an event of its own.
            Event::GeneralRef(_) if !root_seen => {
                return Err(text_before_root(c, &meter, &xml));
            }
            Event::Eof => {
                let at = Some(RecordRef::XmlElement {
                    line: meter.newlines() + 1,
                    byte_offset: xml.buffer_position(),
                });
                let file = c.file().to_owned();
                return Err(if root_seen {
                    let detail = format!("end of file with {depth} element(s) still open");
                    ImportError::Truncated { file, at, detail }
                } else {
                    let detail = "no <HealthData> element: not an Apple Health export".into();
                    ImportError::UnexpectedFormat {
                        file,
                        at,
                        field: None,
                        detail,
                    }
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Text (or a reference) before the root element: not an XML document.
fn text_before_root<R>(
    c: &Collector<'_, '_>,
    meter: &Meter,
    xml: &quick_xml::Reader<R>,
) -> ImportError {
    ImportError::UnexpectedFormat {
        file: c.file().to_owned(),
        at: Some(RecordRef::XmlElement {
            line: meter.newlines() + 1,
            byte_offset: xml.buffer_position(),
        }),
        field: None,
        detail: "text before the root element: not an XML document".into(),
    }
}

fn account(c: &mut Collector<'_, '_>, at: RecordRef, outcome: Result<(), Skip>) {
    match outcome {
        Ok(()) => c.record_emitted(),
        Err(skip) => c.skip(at, skip),
    }
}

/// Line and byte offset of the `<` of the element just read.
fn element_position<R>(
    xml: &quick_xml::Reader<R>,
    meter: &Meter,
    e: &BytesStart<'_>,
    is_empty: bool,
) -> RecordRef {
    let tag_len = e.len() as u64 + if is_empty { 3 } else { 2 };
    let byte_offset = xml.buffer_position().saturating_sub(tag_len);
    let newlines_in_tag = e.iter().filter(|&&b| b == b'\n').count() as u64;
    RecordRef::XmlElement {
        line: 1 + meter.newlines().saturating_sub(newlines_in_tag),
        byte_offset,
    }
}

fn xml_error<R>(
    err: quick_xml::Error,
    xml: &quick_xml::Reader<R>,
    meter: &Meter,
    c: &Collector<'_, '_>,
    limits: &Limits,
) -> ImportError {
    let file = c.file().to_owned();
    let at = Some(RecordRef::XmlElement {
        line: meter.newlines() + 1,
        byte_offset: xml.error_position(),
    });
    if meter.tripped() {
        return ImportError::LimitExceeded {
            file,
            at,
            what: "an XML element",
            limit: limits.max_record_bytes,
        };
    }
    match err {
        quick_xml::Error::Io(source) => {
            let source = Arc::try_unwrap(source)
                .unwrap_or_else(|shared| std::io::Error::new(shared.kind(), shared.to_string()));
            ImportError::Io { file, at, source }
        }
        other if meter.eof() => ImportError::Truncated {
            file,
            at,
            detail: other.to_string(),
        },
        other => ImportError::Malformed {
            file,
            at,
            field: None,
            detail: format!("ill-formed XML: {other}"),
        },
    }
}

/// The values of the `wanted` attributes (unescaped and normalised), or why they could not be read.
fn attributes<const N: usize>(
    e: &BytesStart<'_>,
    wanted: [&[u8]; N],
) -> Result<[Option<String>; N], Skip> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for attr in e.html_attributes() {
        let attr = attr
            .map_err(|err| Skip::new(SkipReason::MalformedRecord, "attributes", err.to_string()))?;
        let Some(i) = wanted.iter().position(|w| *w == attr.key.as_ref()) else {
            continue;
        };
        // Entities and character references expanded, and XML 1.0 attribute-value normalisation (a literal
        // tab, CR or LF becomes a space). A value that is not UTF-8 skips only this record.
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| {
                let field = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
                Skip::new(SkipReason::MalformedRecord, field, err.to_string())
            })?;
        let value = value.trim();
        if !value.is_empty() {
            values[i] = Some(value.to_owned());
        }
    }
    Ok(values)
}

/// The attributes of a `<Record>` the importer reads.
struct RecordAttributes {
    kind: Option<String>,
    unit: Option<String>,
    value: Option<String>,
    start: Option<String>,
    /// Only to recognise a correlation member's top-level copy; never emitted.
    source: Option<String>,
}

fn record_attributes(e: &BytesStart<'_>) -> Result<RecordAttributes, Skip> {
    let [kind, unit, value, start] = attributes(e, [b"type", b"unit", b"value", b"startDate"])?;
    Ok(RecordAttributes {
        kind,
        unit,
        value,
        start,
        source: source_name(e),
    })
}

/// `sourceName`, read leniently: it only tells duplicates apart, so a value that is not UTF-8 (or an
/// attribute that is malformed) does not skip the record.
fn source_name(e: &BytesStart<'_>) -> Option<String> {
    let attr = e
        .html_attributes()
        .flatten()
        .find(|a| a.key.as_ref() == b"sourceName")?;
    let value = match attr.normalized_value(XmlVersion::Implicit1_0) {
        Ok(v) => v.into_owned(),
        Err(_) => String::from_utf8_lossy(&attr.value).into_owned(),
    };
    Some(value.trim().to_owned())
}

fn observation(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    attrs: RecordAttributes,
) -> Result<SourceObservation, Skip> {
    let RecordAttributes {
        kind,
        unit,
        value,
        start,
        ..
    } = attrs;
    let Some(kind) = kind else {
        return Err(Skip::new(SkipReason::MissingCode, "type", "no type"));
    };
    if codes::check(&CodeSystem::AppleHealthKit, &kind) == CodeCheck::Invalid {
        let detail = format!("{} is not a HealthKit type identifier", quoted(&kind));
        return Err(Skip::new(SkipReason::InvalidCode, "type", detail));
    }
    let effective = match start.as_deref().map(|s| (s, dates::parse(s))) {
        None => None,
        Some((_, Some(date))) => {
            if date == SourceDate::Partial {
                c.note(
                    at,
                    Note::ImpreciseDate,
                    "startDate",
                    quoted(start.as_deref().unwrap_or("")),
                );
            }
            date.date_time()
        }
        Some((text, None)) => {
            return Err(Skip::new(
                SkipReason::UnparsableDate,
                "startDate",
                format!("not a date {}", quoted(text)),
            ));
        }
    };
    let is_quantity = kind.starts_with("HKQuantityTypeIdentifier");
    let number = value
        .as_deref()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite());
    let value = match (value, number, unit) {
        (None, _, _) if is_quantity => {
            return Err(Skip::new(SkipReason::MissingValue, "value", "no value"))
        }
        (None, _, _) => SourceValue::None,
        (Some(raw), None, _) if is_quantity => {
            return Err(Skip::new(
                SkipReason::UnparsableValue,
                "value",
                format!("not a number {}", quoted(&raw)),
            ));
        }
        (Some(_), Some(number), None) if is_quantity => {
            return Err(Skip::new(
                SkipReason::MissingUnit,
                "unit",
                format!("{number} without unit"),
            ));
        }
        (Some(_), Some(number), Some(unit)) => SourceValue::Quantity {
            value: number,
            unit,
        },
        (Some(raw), _, _) => SourceValue::Text(raw),
    };
    Ok(SourceObservation {
        patient: None,
        code: Code {
            system: CodeSystem::AppleHealthKit,
            code: kind,
        },
        value,
        effective,
        location: c.location(at),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Correlation members

/// Most distinct record types remembered as correlation member types.
const MAX_MEMBER_TYPES: usize = 256;

/// Whether a HealthKit type is one Apple nests in a `<Correlation>` (blood pressure, food).
fn is_member_type(kind: &str) -> bool {
    matches!(
        kind,
        "HKQuantityTypeIdentifierBloodPressureSystolic"
            | "HKQuantityTypeIdentifierBloodPressureDiastolic"
    ) || kind.starts_with("HKQuantityTypeIdentifierDietary")
}

/// A digest of a record's type, start and source: what makes a correlation member a copy of a
/// top-level record.
fn member_key(attrs: &RecordAttributes) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [&attrs.kind, &attrs.start, &attrs.source] {
        match part {
            Some(text) => {
                ctx.update(&(text.len() as u64).to_be_bytes());
                ctx.update(text.as_bytes());
            }
            None => ctx.update(&u64::MAX.to_be_bytes()),
        }
    }
    let digest = ctx.finish();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

/// A correlation member waiting for the end of the document: emitted unless a top-level copy turns up.
struct Held {
    at: RecordRef,
    observation: SourceObservation,
}

/// Correlation members and the top-level records they may duplicate (see the module docs).
struct Members {
    /// Digests of top-level records of member types.
    top_level: HashSet<[u8; 16]>,
    /// Members without a top-level copy so far, by digest.
    held: HashMap<[u8; 16], Vec<Held>>,
    held_count: usize,
    /// Types met inside a correlation besides those of [`is_member_type`].
    types: HashSet<String>,
    max_keys: usize,
    max_held: usize,
}

impl Members {
    fn new(limits: &Limits) -> Self {
        Members {
            top_level: HashSet::new(),
            held: HashMap::new(),
            held_count: 0,
            types: HashSet::new(),
            max_keys: limits.max_correlation_keys,
            max_held: limits.max_reference_table,
        }
    }

    /// A top-level record: remembered if of a member type; held members it duplicates are skipped.
    fn top_level(&mut self, c: &mut Collector<'_, '_>, attrs: &RecordAttributes) {
        let Some(kind) = attrs.kind.as_deref() else {
            return;
        };
        if !is_member_type(kind) && !self.types.contains(kind) {
            return;
        }
        let key = member_key(attrs);
        if let Some(copies) = self.held.remove(&key) {
            self.held_count -= copies.len();
            for held in copies {
                c.skip(held.at, duplicate());
            }
        }
        if self.top_level.len() < self.max_keys {
            self.top_level.insert(key);
        }
    }

    /// A member of a correlation: skipped if a top-level copy was read, else held.
    fn member(&mut self, c: &mut Collector<'_, '_>, at: RecordRef, attrs: RecordAttributes) {
        if let Some(kind) = attrs.kind.as_deref() {
            if !is_member_type(kind) && self.types.len() < MAX_MEMBER_TYPES {
                self.types.insert(kind.to_owned());
            }
        }
        let key = member_key(&attrs);
        if self.top_level.contains(&key) {
            c.skip(at, duplicate());
            return;
        }
        let full = self.held_count >= self.max_held || self.top_level.len() >= self.max_keys;
        match observation(c, at, attrs) {
            Err(skip) => c.skip(at, skip),
            Ok(_) if full => c.skip(
                at,
                Skip::new(
                    SkipReason::CorrelationMember,
                    "Record",
                    "presumed a duplicate: too many records to compare",
                ),
            ),
            Ok(observation) => {
                self.held_count += 1;
                self.held
                    .entry(key)
                    .or_default()
                    .push(Held { at, observation });
            }
        }
    }

    /// The end of the document: every member still held has no top-level copy and is emitted, in
    /// document order.
    fn finish(&mut self, c: &mut Collector<'_, '_>) -> Result<(), ImportError> {
        let mut held: Vec<Held> = self.held.drain().flat_map(|(_, v)| v).collect();
        self.held_count = 0;
        held.sort_by_key(|h| h.at);
        for h in held {
            c.emit(SourceItem::Observation(h.observation))?;
            c.record_emitted();
        }
        Ok(())
    }
}

fn duplicate() -> Skip {
    Skip::new(
        SkipReason::CorrelationMember,
        "Record",
        "a top-level Record with the same type, startDate and sourceName exists",
    )
}

fn me(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    e: &BytesStart<'_>,
) -> Result<Result<(), Skip>, ImportError> {
    let [birth, sex] = match attributes(
        e,
        [
            b"HKCharacteristicTypeIdentifierDateOfBirth",
            b"HKCharacteristicTypeIdentifierBiologicalSex",
        ],
    ) {
        Ok(values) => values,
        Err(skip) => return Ok(Err(skip)),
    };
    let mut d = Demographics {
        location: Some(c.location(at)),
        ..Demographics::default()
    };
    if let Some(text) = birth.as_deref() {
        match dates::parse(text) {
            Some(SourceDate::Partial) => c.note(
                at,
                Note::ImpreciseDate,
                "HKCharacteristicTypeIdentifierDateOfBirth",
                quoted(text),
            ),
            Some(date) => d.birth_date = date.date(),
            None => c.note(
                at,
                Note::UnparsableBirthDate,
                "HKCharacteristicTypeIdentifierDateOfBirth",
                quoted(text),
            ),
        }
    }
    d.sex = match sex.as_deref() {
        None | Some("HKBiologicalSexNotSet") => None,
        Some("HKBiologicalSexFemale") => Some(Sex::Female),
        Some("HKBiologicalSexMale") => Some(Sex::Male),
        Some("HKBiologicalSexOther") => Some(Sex::Other),
        Some(other) => {
            c.note(
                at,
                Note::UnrecognisedSex,
                "HKCharacteristicTypeIdentifierBiologicalSex",
                quoted(other),
            );
            None
        }
    };
    c.emit(SourceItem::Demographics(d))?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctype_with_unbalanced_attlist_is_blanked() {
        let mut head = b"<?xml version=\"1.0\"?>\n<!DOCTYPE HealthData [\n<!ATTLIST A\n  b CDATA #REQUIRED\n<!ELEMENT C EMPTY>\n]>\n<HealthData>".to_vec();
        assert!(matches!(scan_prolog(&mut head, 0), Scan::Root));
        let text = String::from_utf8_lossy(&head);
        assert!(
            !text.contains("DOCTYPE") && !text.contains("ATTLIST"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 7);
        assert!(text.ends_with("<HealthData>"));
    }

    #[test]
    fn incomplete_doctype_needs_more() {
        let mut head = b"<!DOCTYPE HealthData [ <!ELEMENT C EMPTY> ".to_vec();
        assert!(matches!(
            scan_prolog(&mut head, 0),
            Scan::NeedMore {
                inside: "the DOCTYPE declaration",
                ..
            }
        ));
    }
}
