//! FHIR R4 JSON importer: Bundles of any type (transaction, batch, collection, searchset, ...), streamed one
//! entry at a time, a single resource (one `Observation`, one `Patient`, ...), a `List` (its `contained`
//! resources, and entries that carry a `resource`), and FHIR Bulk Data NDJSON, one resource per line. A
//! UTF-8 BOM is skipped.
//!
//! A `Bundle` or `List` found as a resource (inside a Bundle entry, on an NDJSON line, or a `List` file)
//! is counted as a [`SkipReason::Container`] and the resources it holds are read as records of their own,
//! located at the container's record (a top-level `List`'s contained resources at `contained[i]`). A
//! `List` entry that only refers to a resource (`item.reference`) is not a record: a reference to a
//! contained resource (`#id`) is read there, and in a `List` file any other reference is counted as
//! [`SkipReason::ReferenceOutsideFile`].
//!
//! Resources read: `Patient` → [`Demographics`]; `Observation` → one [`SourceObservation`] for its own value
//! and one per `component` (blood-pressure panels `85354-9`/`55284-4` give a systolic `8480-6` and a
//! diastolic `8462-4`, with the panel's effective time); `Condition`; `MedicationRequest` (with
//! `medicationCodeableConcept`, or `medicationReference` resolved against `Medication` resources or
//! `contained` ones in the same file). Every other type is counted by type and skipped.
//!
//! A code is the first coding whose system is LOINC, SNOMED CT or RxNorm and whose code is well-formed for
//! that system; failing that, the first coding with any system ([`CodeSystem::Other`]). A known-system code
//! that is malformed (an OpenMRS concept id labelled LOINC) skips the record as
//! [`SkipReason::InvalidCode`].
//!
//! # Streaming
//!
//! A Bundle is read with `serde_json::Deserializer::from_reader` and a `DeserializeSeed` that walks the
//! top-level object and, inside `entry`, deserialises one entry at a time into a map of only the fields read
//! below (everything else, narratives and attachments included, is skipped by the parser unstored), hands its
//! items to the sink, and drops it before reading the next. `resourceType` may come after `entry` (it does in
//! the Synthea files), so what the file is can only be decided at the end: the top-level object keeps the same
//! fields as a Bundle entry's resource, and when it is not a `Bundle` it is read as one resource
//! ([`RecordRef::Resource`]).

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Cursor, Read};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::codes::{self, CodeCheck};
use super::dates::{self, SourceDate};
use super::metered::{Meter, Metered};
use super::report::{quoted, Collector, Skip};
use super::{
    is_identifying_observation, Code, CodeSystem, Demographics, ImportError, ImportOptions,
    ImportReport, ItemSink, Note, RecordRef, Sex, SkipReason, SourceCondition, SourceItem,
    SourceMedication, SourceObservation, SourceValue,
};

/// How many bytes of the first line [`import_json`] looks at to tell a Bundle from NDJSON.
const SNIFF_BYTES: u64 = 64 * 1024;

/// The UCUM system URI; a quantity's `code` is used as its unit when its `system` is this.
const UCUM: &str = "http://unitsofmeasure.org";

/// Type under which records without a readable `resourceType` are counted.
const UNKNOWN_TYPE: &str = "(unknown)";

/// Type under which Bundle entries without a `resource` (e.g. a transaction's DELETE) are counted.
const NO_RESOURCE: &str = "(no resource)";

/// Type under which a List's references to resources outside the file are counted.
const REFERENCE: &str = "(reference)";

/// How deeply Bundles and Lists inside resources are followed.
const MAX_NESTING: usize = 8;

/// Identifier systems of national person numbers (see [`Demographics::primary_national_id`]).
const NATIONAL_ID_SYSTEMS: &[&str] = &[
    "http://hl7.org/fhir/sid/us-ssn",
    "urn:oid:2.16.840.1.113883.4.1", // US SSN
    "urn:oid:1.2.208.176.1.2",       // Danish CPR
    "http://cpr.dk",                 // Danish CPR
    "http://fhir.nl/fhir/NamingSystem/bsn",
    "urn:oid:2.16.840.1.113883.2.4.6.3", // Dutch BSN
    "https://fhir.nhs.uk/Id/nhs-number",
    "urn:oid:1.2.752.129.2.1.3.1",   // Swedish personnummer
    "urn:oid:2.16.578.1.12.4.1.4.1", // Norwegian fødselsnummer
];

/// Identifier systems of the Danish CPR number (see [`Demographics::cpr`]).
const CPR_SYSTEMS: &[&str] = &["urn:oid:1.2.208.176.1.2", "http://cpr.dk"];

/// Imports FHIR JSON, telling a Bundle from NDJSON by the first line: a first line that is a complete JSON
/// object with a `resourceType` other than `Bundle` means NDJSON; anything else is read as a Bundle.
pub fn import_json<R: Read>(
    reader: R,
    file: &str,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let mut collector = Collector::new(options.limits, sink);
    collector.start_file(file);
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = read_head(&mut reader, file)?;
    let layout = sniff(&head, file)?;
    let stream = Cursor::new(head).chain(reader);
    match layout {
        Layout::Bundle => read_bundle(stream, &mut collector)?,
        Layout::Ndjson => read_ndjson(stream, &mut collector)?,
    }
    Ok(collector.finish())
}

/// Imports a FHIR Bundle (any `type`).
pub fn import_bundle<R: Read>(
    reader: R,
    file: &str,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let mut collector = Collector::new(options.limits, sink);
    collector.start_file(file);
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = read_head(&mut reader, file)?;
    read_bundle(Cursor::new(head).chain(reader), &mut collector)?;
    Ok(collector.finish())
}

/// Imports FHIR Bulk Data NDJSON: one resource per line; blank lines are ignored.
pub fn import_ndjson<R: Read>(
    reader: R,
    file: &str,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let mut collector = Collector::new(options.limits, sink);
    collector.start_file(file);
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = read_head(&mut reader, file)?;
    read_ndjson(Cursor::new(head).chain(reader), &mut collector)?;
    Ok(collector.finish())
}

/// Reads the first line (at most [`SNIFF_BYTES`]) and drops a UTF-8 BOM from it.
fn read_head<R: Read>(reader: &mut BufReader<R>, file: &str) -> Result<Vec<u8>, ImportError> {
    let mut head = Vec::new();
    reader
        .take(SNIFF_BYTES)
        .read_until(b'\n', &mut head)
        .map_err(|source| ImportError::Io {
            file: file.to_owned(),
            at: None,
            source,
        })?;
    if head.starts_with(b"\xEF\xBB\xBF") {
        head.drain(..3);
    }
    Ok(head)
}

enum Layout {
    Bundle,
    Ndjson,
}

fn sniff(head: &[u8], file: &str) -> Result<Layout, ImportError> {
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(ImportError::UnexpectedFormat {
                file: file.to_owned(),
                at: Some(RecordRef::Line(1)),
                field: None,
                detail: "not FHIR JSON: does not start with a JSON object".into(),
            })
        }
        None => {
            return Err(ImportError::UnexpectedFormat {
                file: file.to_owned(),
                at: None,
                field: None,
                detail: "not FHIR JSON: the file is empty".into(),
            })
        }
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "resourceType")]
        resource_type: Option<Value>,
    }
    match serde_json::from_slice::<Probe>(head) {
        Ok(Probe {
            resource_type: Some(Value::String(t)),
        }) if t != "Bundle" => Ok(Layout::Ndjson),
        _ => Ok(Layout::Bundle),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Bundle streaming

fn read_bundle<R: Read>(reader: R, collector: &mut Collector<'_, '_>) -> Result<(), ImportError> {
    let meter = Meter::new(collector.limits().max_bundle_entry_bytes);
    let mut de = serde_json::Deserializer::from_reader(Metered::new(reader, meter.clone()));
    let mut state = BundleState {
        importer: FhirImporter::new(collector),
        meter,
        current: None,
        fatal: None,
    };
    let top = match (BundleSeed { state: &mut state }).deserialize(&mut de) {
        Ok(top) => top,
        Err(err) => return Err(state.error_from(err)),
    };
    if let Err(err) = de.end() {
        return Err(state.error_from(err));
    }
    let file = state.importer.c.file().to_owned();
    match top.fields.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(_) => {
            // One resource (or a List): read as the file's single record.
            state.importer.resource(
                RecordRef::Resource,
                None,
                Some(RawResource::Object(top.fields)),
            )?;
        }
        None => {
            return Err(ImportError::UnexpectedFormat {
                file,
                at: None,
                field: Some("resourceType".into()),
                detail: "no resourceType: not a FHIR resource or Bundle".into(),
            })
        }
    }
    state.importer.resolve_pending()
}

struct BundleState<'c, 's, 'a> {
    importer: FhirImporter<'c, 's, 'a>,
    meter: Meter,
    /// Index of the entry being read, while inside `entry`.
    current: Option<u64>,
    /// A fatal error raised while handling an entry (the serde error only says "stopped").
    fatal: Option<ImportError>,
}

impl BundleState<'_, '_, '_> {
    fn error_from(&mut self, err: serde_json::Error) -> ImportError {
        if let Some(fatal) = self.fatal.take() {
            return fatal;
        }
        let file = self.importer.c.file().to_owned();
        let at = self.current.map(RecordRef::BundleEntry);
        if self.meter.tripped() {
            let limit = self.importer.c.limits().max_bundle_entry_bytes;
            return ImportError::LimitExceeded {
                file,
                at,
                what: "a Bundle entry",
                limit,
            };
        }
        match err.classify() {
            serde_json::error::Category::Io => ImportError::Io {
                file,
                at,
                source: err.into(),
            },
            serde_json::error::Category::Eof => ImportError::Truncated {
                file,
                at,
                detail: err.to_string(),
            },
            serde_json::error::Category::Syntax => ImportError::Malformed {
                file,
                at,
                field: None,
                detail: format!("invalid JSON: {err}"),
            },
            serde_json::error::Category::Data => ImportError::UnexpectedFormat {
                file,
                at,
                field: None,
                detail: format!("not a FHIR resource or Bundle: {err}"),
            },
        }
    }
}

/// The top-level object without its streamed `entry`: the fields a resource keeps (see [`READ_FIELDS`]).
struct TopLevel {
    fields: Map<String, Value>,
}

struct BundleSeed<'x, 'c, 's, 'a> {
    state: &'x mut BundleState<'c, 's, 'a>,
}

impl<'de> DeserializeSeed<'de> for BundleSeed<'_, '_, '_, '_> {
    type Value = TopLevel;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TopLevel, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BundleSeed<'_, '_, '_, '_> {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR Bundle object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.state.meter.mark();
            if key == "entry" {
                map.next_value_seed(EntriesSeed {
                    state: &mut *self.state,
                })?;
            } else if READ_FIELDS.contains(&key.as_str()) || READ_VALUES.contains(&key.as_str()) {
                let value = map.next_value::<Value>()?;
                fields.insert(key, value);
            } else {
                map.next_value::<IgnoredAny>()?;
                if is_value_key(&key) {
                    fields.insert(key, Value::Null);
                }
            }
        }
        Ok(TopLevel { fields })
    }
}

struct EntriesSeed<'x, 'c, 's, 'a> {
    state: &'x mut BundleState<'c, 's, 'a>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the Bundle's entry array")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u64;
        loop {
            self.state.meter.mark();
            self.state.current = Some(index);
            let Some(entry) = seq.next_element::<RawEntry>()? else {
                break;
            };
            if let Err(err) = self.state.importer.entry(index, entry) {
                self.state.fatal = Some(err);
                return Err(de::Error::custom("import stopped"));
            }
            index += 1;
        }
        self.state.current = None;
        Ok(())
    }
}

/// One Bundle (or List) entry: only `fullUrl`, `resource` and a List entry's `item.reference` are kept.
enum RawEntry {
    Entry {
        full_url: Option<String>,
        resource: Option<RawResource>,
        item: Option<String>,
    },
    NotAnObject,
}

impl<'de> Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = RawEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Bundle entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
        let mut full_url = None;
        let mut resource = None;
        let mut item = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "fullUrl" => {
                    if let Value::String(url) = map.next_value::<Value>()? {
                        full_url = Some(url);
                    }
                }
                "resource" => resource = Some(map.next_value::<RawResource>()?),
                "item" => {
                    item = Some(
                        map.next_value::<Value>()?
                            .get("reference")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RawEntry::Entry {
            full_url,
            resource,
            item,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEntry, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawEntry::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawEntry, E> {
        Ok(RawEntry::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawEntry, E> {
        Ok(RawEntry::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawEntry, E> {
        Ok(RawEntry::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawEntry, E> {
        Ok(RawEntry::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawEntry, E> {
        Ok(RawEntry::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawEntry, E> {
        Ok(RawEntry::NotAnObject)
    }
}

/// The fields of a resource that the importer reads; all others are skipped by the parser unstored.
const READ_FIELDS: &[&str] = &[
    "resourceType",
    "entry",
    "id",
    "status",
    "code",
    "subject",
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "effectiveTiming",
    "component",
    "hasMember",
    "derivedFrom",
    "dataAbsentReason",
    "verificationStatus",
    "onsetDateTime",
    "onsetPeriod",
    "onsetAge",
    "onsetRange",
    "onsetString",
    "medicationCodeableConcept",
    "medicationReference",
    "medication",
    "authoredOn",
    "contained",
    "birthDate",
    "gender",
    "identifier",
    "name",
    "address",
    "contact",
];

/// `value[x]` variants whose content is read; other `value[x]` keys are kept as `null` markers.
const READ_VALUES: &[&str] = &[
    "valueQuantity",
    "valueString",
    "valueCodeableConcept",
    "valueBoolean",
    "valueInteger",
    "valueDateTime",
    "valueTime",
];

/// A resource reduced to [`READ_FIELDS`] and `value[x]`, or a marker for JSON that is not an object.
enum RawResource {
    Object(Map<String, Value>),
    NotAnObject,
}

impl<'de> Deserialize<'de> for RawResource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ResourceVisitor)
    }
}

struct ResourceVisitor;

impl<'de> Visitor<'de> for ResourceVisitor {
    type Value = RawResource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawResource, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if READ_FIELDS.contains(&key.as_str()) || READ_VALUES.contains(&key.as_str()) {
                let value = map.next_value::<Value>()?;
                fields.insert(key, value);
            } else {
                map.next_value::<IgnoredAny>()?;
                if is_value_key(&key) {
                    fields.insert(key, Value::Null);
                }
            }
        }
        Ok(RawResource::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawResource, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawResource::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawResource, E> {
        Ok(RawResource::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawResource, E> {
        Ok(RawResource::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawResource, E> {
        Ok(RawResource::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawResource, E> {
        Ok(RawResource::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawResource, E> {
        Ok(RawResource::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawResource, E> {
        Ok(RawResource::NotAnObject)
    }
}

/// `valueQuantity`, `valueString`, ...: `value` followed by an upper-case letter.
fn is_value_key(key: &str) -> bool {
    key.strip_prefix("value")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
}

// ---------------------------------------------------------------------------------------------------------
// NDJSON

fn read_ndjson<R: BufRead>(
    mut reader: R,
    collector: &mut Collector<'_, '_>,
) -> Result<(), ImportError> {
    let limit = collector.limits().max_record_bytes;
    let mut importer = FhirImporter::new(collector);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut parsed_any = false;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(limit.saturating_add(1))
            .read_until(b'\n', &mut line)
            .map_err(|source| ImportError::Io {
                file: importer.c.file().to_owned(),
                at: Some(RecordRef::Line(line_no + 1)),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let at = RecordRef::Line(line_no);
        let complete = line.ends_with(b"\n");
        if !complete && line.len() as u64 > limit {
            return Err(ImportError::LimitExceeded {
                file: importer.c.file().to_owned(),
                at: Some(at),
                what: "an NDJSON line",
                limit,
            });
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<RawResource>(text) {
            Ok(resource) => {
                parsed_any = true;
                importer.resource(at, None, Some(resource))?;
            }
            Err(err) if !complete && err.classify() == serde_json::error::Category::Eof => {
                return Err(ImportError::Truncated {
                    file: importer.c.file().to_owned(),
                    at: Some(at),
                    detail: format!("the last line is an incomplete JSON object: {err}"),
                });
            }
            Err(err) if !parsed_any => {
                return Err(ImportError::UnexpectedFormat {
                    file: importer.c.file().to_owned(),
                    at: Some(at),
                    field: None,
                    detail: format!("not FHIR NDJSON: {err}"),
                });
            }
            Err(err) => {
                importer.c.seen(UNKNOWN_TYPE);
                importer.c.skip(
                    at,
                    Skip::new(
                        SkipReason::MalformedRecord,
                        "line",
                        format!("invalid JSON: {err}"),
                    ),
                );
            }
        }
    }
    importer.resolve_pending()
}

// ---------------------------------------------------------------------------------------------------------
// Resources

enum Outcome {
    Emitted,
    Skipped(Skip),
    /// A MedicationRequest waiting for its `Medication`; accounted for in `resolve_pending`.
    Deferred,
}

struct PendingMedication {
    at: RecordRef,
    reference: String,
    patient: Option<String>,
    authored: Option<jiff::civil::Date>,
}

/// Per-file state: the collector, `Medication` codes by reference, and requests waiting for one.
struct FhirImporter<'c, 's, 'a> {
    c: &'c mut Collector<'s, 'a>,
    medications: HashMap<String, Result<Code, Skip>>,
    pending: Vec<PendingMedication>,
    /// Bundles and Lists being read inside resources.
    nesting: usize,
}

impl<'c, 's, 'a> FhirImporter<'c, 's, 'a> {
    fn new(c: &'c mut Collector<'s, 'a>) -> Self {
        FhirImporter {
            c,
            medications: HashMap::new(),
            pending: Vec::new(),
            nesting: 0,
        }
    }

    fn entry(&mut self, index: u64, entry: RawEntry) -> Result<(), ImportError> {
        let at = RecordRef::BundleEntry(index);
        match entry {
            // A top-level List's entry that refers to one of its contained resources: that resource is
            // the record, read with the List.
            RawEntry::Entry {
                resource: None,
                item: Some(reference),
                ..
            } if reference.starts_with('#') => Ok(()),
            RawEntry::Entry {
                resource: None,
                item: Some(reference),
                ..
            } => {
                self.c.seen(REFERENCE);
                let detail = if reference.is_empty() {
                    "List entry without item.reference".to_owned()
                } else {
                    format!("{} is not in the file", quoted(&reference))
                };
                self.c.skip(
                    at,
                    Skip::new(SkipReason::ReferenceOutsideFile, "item.reference", detail),
                );
                Ok(())
            }
            RawEntry::Entry {
                full_url, resource, ..
            } => self.resource(at, full_url.as_deref(), resource),
            RawEntry::NotAnObject => {
                self.c.seen(UNKNOWN_TYPE);
                self.c.skip(
                    at,
                    Skip::new(
                        SkipReason::MalformedRecord,
                        "entry",
                        "entry is not a JSON object",
                    ),
                );
                Ok(())
            }
        }
    }

    fn resource(
        &mut self,
        at: RecordRef,
        full_url: Option<&str>,
        resource: Option<RawResource>,
    ) -> Result<(), ImportError> {
        let r = match resource {
            Some(RawResource::Object(r)) => r,
            Some(RawResource::NotAnObject) => {
                self.c.seen(UNKNOWN_TYPE);
                self.c.skip(
                    at,
                    Skip::new(
                        SkipReason::MalformedRecord,
                        "resource",
                        "resource is not a JSON object",
                    ),
                );
                return Ok(());
            }
            None => {
                self.c.seen(NO_RESOURCE);
                self.c.skip(
                    at,
                    Skip::new(
                        SkipReason::UnsupportedResourceType,
                        "resource",
                        "entry without resource",
                    ),
                );
                return Ok(());
            }
        };
        let Some(resource_type) = r.get("resourceType").and_then(Value::as_str) else {
            self.c.seen(UNKNOWN_TYPE);
            self.c.skip(
                at,
                Skip::new(
                    SkipReason::MalformedRecord,
                    "resourceType",
                    "no resourceType",
                ),
            );
            return Ok(());
        };
        self.c.seen(resource_type);
        let outcome = match resource_type {
            "Patient" => self.patient(at, full_url, &r)?,
            "Observation" => self.observation(at, &r)?,
            "Condition" => self.condition(at, &r)?,
            "MedicationRequest" => self.medication_request(at, &r)?,
            "Medication" => {
                self.remember_medication(at, full_url, &r);
                Outcome::Skipped(Skip::new(
                    SkipReason::ReferenceOnly,
                    "resourceType",
                    "Medication",
                ))
            }
            "Bundle" | "List" => self.container(at, resource_type, &r)?,
            other => Outcome::Skipped(Skip::new(
                SkipReason::UnsupportedResourceType,
                "resourceType",
                other,
            )),
        };
        match outcome {
            Outcome::Emitted => self.c.record_emitted(),
            Outcome::Skipped(skip) => self.c.skip(at, skip),
            Outcome::Deferred => {}
        }
        Ok(())
    }

    // --- Bundle and List inside a resource ---------------------------------------------------------------

    /// A Bundle or List read as a resource: the resources it holds (a Bundle's entries, a List's
    /// contained resources and entries with a `resource`) are records of their own.
    fn container(
        &mut self,
        at: RecordRef,
        kind: &str,
        r: &Map<String, Value>,
    ) -> Result<Outcome, ImportError> {
        if self.nesting >= MAX_NESTING {
            return Ok(Outcome::Skipped(Skip::new(
                SkipReason::MalformedRecord,
                "resourceType",
                format!("{kind} nested more than {MAX_NESTING} deep"),
            )));
        }
        self.nesting += 1;
        let result = self.container_members(at, kind, r);
        self.nesting -= 1;
        result?;
        Ok(Outcome::Skipped(Skip::new(
            SkipReason::Container,
            "resourceType",
            kind,
        )))
    }

    fn container_members(
        &mut self,
        at: RecordRef,
        kind: &str,
        r: &Map<String, Value>,
    ) -> Result<(), ImportError> {
        if kind == "List" {
            for (i, contained) in array_field(r, "contained").iter().enumerate() {
                let inner = match at {
                    RecordRef::Resource => RecordRef::Contained(i as u64),
                    other => other,
                };
                self.resource(inner, None, Some(raw_resource(contained)))?;
            }
        }
        for entry in array_field(r, "entry") {
            // A List entry's item.reference points at a record held elsewhere; only entries that
            // carry their resource are read here.
            if let Some(resource) = entry.get("resource") {
                let full_url = entry.get("fullUrl").and_then(Value::as_str);
                self.resource(at, full_url, Some(raw_resource(resource)))?;
            }
        }
        Ok(())
    }

    // --- Patient -----------------------------------------------------------------------------------------

    fn patient(
        &mut self,
        at: RecordRef,
        full_url: Option<&str>,
        r: &Map<String, Value>,
    ) -> Result<Outcome, ImportError> {
        let mut d = Demographics {
            patient: str_field(r, "id")
                .map(str::to_owned)
                .or_else(|| full_url.map(local_id)),
            location: Some(self.c.location(at)),
            ..Demographics::default()
        };
        if let Some(text) = str_field(r, "birthDate") {
            match dates::parse(text) {
                Some(SourceDate::Partial) => {
                    self.c
                        .note(at, Note::ImpreciseDate, "birthDate", quoted(text))
                }
                Some(date) => d.birth_date = date.date(),
                None => self
                    .c
                    .note(at, Note::UnparsableBirthDate, "birthDate", quoted(text)),
            }
        }
        if let Some(gender) = str_field(r, "gender") {
            d.sex = match gender {
                "female" => Some(Sex::Female),
                "male" => Some(Sex::Male),
                "other" => Some(Sex::Other),
                "unknown" => Some(Sex::Unknown),
                other => {
                    self.c
                        .note(at, Note::UnrecognisedSex, "gender", quoted(other));
                    None
                }
            };
        }
        for identifier in array_field(r, "identifier") {
            let Some(value) = identifier
                .get("value")
                .and_then(Value::as_str)
                .map(str::trim)
            else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            if d.primary_national_id.is_none() && is_national_identifier(identifier) {
                d.primary_national_id = Some(value.to_owned());
            }
            let system = identifier
                .get("system")
                .and_then(Value::as_str)
                .map(str::trim);
            if d.cpr.is_none() && system.is_some_and(|s| CPR_SYSTEMS.contains(&s)) {
                d.cpr = Some(value.to_owned());
            }
            push_unique(&mut d.national_ids, value);
        }
        collect_names(array_field(r, "name"), &mut d.names);
        let addresses = array_field(r, "address");
        collect_addresses(addresses, &mut d.addresses);
        for contact in array_field(r, "contact") {
            if let Some(name) = contact.get("name") {
                collect_names(std::slice::from_ref(name), &mut d.names);
            }
            if let Some(address) = contact.get("address") {
                collect_addresses(std::slice::from_ref(address), &mut d.addresses);
            }
        }
        fn postcode_of(address: &Value) -> Option<&str> {
            address
                .get("postalCode")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|p| !p.is_empty())
        }
        let current = addresses
            .iter()
            .filter(|a| a.get("use").and_then(Value::as_str) != Some("old"));
        d.postcode = current
            .filter_map(postcode_of)
            .next()
            .or_else(|| addresses.iter().find_map(postcode_of))
            .map(str::to_owned);
        self.c.emit(SourceItem::Demographics(d))?;
        Ok(Outcome::Emitted)
    }

    // --- Observation -------------------------------------------------------------------------------------

    fn observation(
        &mut self,
        at: RecordRef,
        r: &Map<String, Value>,
    ) -> Result<Outcome, ImportError> {
        if str_field(r, "status") == Some("entered-in-error") {
            return Ok(Outcome::Skipped(Skip::new(
                SkipReason::EnteredInError,
                "status",
                "entered-in-error",
            )));
        }
        let effective = match self.effective(at, r) {
            Ok(effective) => effective,
            Err(skip) => return Ok(Outcome::Skipped(skip)),
        };
        let components: &[Value] = match r.get("component") {
            None => &[],
            Some(Value::Array(components)) => components,
            Some(_) => {
                return Ok(Outcome::Skipped(Skip::new(
                    SkipReason::MalformedRecord,
                    "component",
                    "not an array",
                )))
            }
        };
        let has_value = r.keys().any(|k| is_value_key(k));
        if !has_value && components.is_empty() {
            let skip = if r.contains_key("hasMember") || r.contains_key("derivedFrom") {
                Skip::new(
                    SkipReason::PanelWithoutValue,
                    "value[x]",
                    "a panel with members and no value of its own",
                )
            } else if r.contains_key("dataAbsentReason") {
                Skip::new(
                    SkipReason::MissingValue,
                    "value[x]",
                    "no value (dataAbsentReason given)",
                )
            } else {
                Skip::new(SkipReason::MissingValue, "value[x]", "no value")
            };
            return Ok(Outcome::Skipped(skip));
        }
        let patient = self.subject(at, r);
        if components.is_empty() {
            return match self.coded_value(at, r, "") {
                Ok((code, value)) => {
                    self.emit_observation(at, &patient, code, value, effective)?;
                    Ok(Outcome::Emitted)
                }
                Err(skip) => Ok(Outcome::Skipped(skip)),
            };
        }
        // A panel: its own value (if any) and one observation per component, all at the panel's time.
        let mut emitted = false;
        let mut first_failure = None;
        let mut results = Vec::with_capacity(components.len() + 1);
        if has_value {
            results.push(self.coded_value(at, r, ""));
        }
        for (i, component) in components.iter().enumerate() {
            let prefix = format!("component[{i}].");
            results.push(match component.as_object() {
                Some(obj) if obj.keys().any(|k| is_value_key(k)) => {
                    self.coded_value(at, obj, &prefix)
                }
                Some(_) => Err(Skip::new(
                    SkipReason::MissingValue,
                    format!("{prefix}value[x]"),
                    "no value",
                )),
                None => Err(Skip::new(
                    SkipReason::MalformedRecord,
                    format!("component[{i}]"),
                    "not an object",
                )),
            });
        }
        for result in results {
            match result {
                Ok((code, value)) => {
                    self.emit_observation(at, &patient, code, value, effective)?;
                    emitted = true;
                }
                Err(skip) => {
                    self.c.skip_component(at, skip.clone());
                    first_failure.get_or_insert(skip);
                }
            }
        }
        Ok(match (emitted, first_failure) {
            (true, _) => Outcome::Emitted,
            (false, Some(skip)) => Outcome::Skipped(skip),
            (false, None) => Outcome::Skipped(Skip::new(
                SkipReason::MissingValue,
                "component",
                "no usable component",
            )),
        })
    }

    fn emit_observation(
        &mut self,
        at: RecordRef,
        patient: &Option<String>,
        code: Code,
        value: SourceValue,
        effective: Option<jiff::civil::DateTime>,
    ) -> Result<(), ImportError> {
        let location = self.c.location(at);
        self.c.emit(SourceItem::Observation(SourceObservation {
            patient: patient.clone(),
            code,
            value,
            effective,
            location,
        }))
    }

    /// The value and code of an observation or component (`prefix` names the component in problems).
    fn coded_value(
        &mut self,
        at: RecordRef,
        obj: &Map<String, Value>,
        prefix: &str,
    ) -> Result<(Code, SourceValue), Skip> {
        let code = self.select_code(at, obj.get("code"), &format!("{prefix}code"))?;
        if is_identifying_observation(&code) {
            return Err(Skip::new(
                SkipReason::IdentifyingObservation,
                format!("{prefix}code"),
                code.code,
            ));
        }
        let value = read_value(obj, prefix)?;
        Ok((code, value))
    }

    fn effective(
        &mut self,
        at: RecordRef,
        r: &Map<String, Value>,
    ) -> Result<Option<jiff::civil::DateTime>, Skip> {
        let (field, value) = if let Some(v) = r.get("effectiveDateTime") {
            ("effectiveDateTime", v)
        } else if let Some(v) = r.get("effectiveInstant") {
            ("effectiveInstant", v)
        } else if let Some(v) = r.get("effectivePeriod").and_then(|p| p.get("start")) {
            ("effectivePeriod.start", v)
        } else {
            if r.contains_key("effectiveTiming") {
                self.c.note(
                    at,
                    Note::UnsupportedDateForm,
                    "effectiveTiming",
                    "effectiveTiming".into(),
                );
            }
            return Ok(None);
        };
        Ok(self.date(at, field, value)?.and_then(SourceDate::date_time))
    }

    /// Parses a date field; a partial date is noted and gives `None`.
    fn date(
        &mut self,
        at: RecordRef,
        field: &'static str,
        value: &Value,
    ) -> Result<Option<SourceDate>, Skip> {
        let Some(text) = value.as_str() else {
            return Err(Skip::new(SkipReason::UnparsableDate, field, "not a string"));
        };
        match dates::parse(text) {
            Some(SourceDate::Partial) => {
                self.c.note(at, Note::ImpreciseDate, field, quoted(text));
                Ok(None)
            }
            Some(date) => Ok(Some(date)),
            None => Err(Skip::new(
                SkipReason::UnparsableDate,
                field,
                format!("not a date {}", quoted(text)),
            )),
        }
    }

    /// The patient key from `subject`; notes a subject that names no patient id.
    fn subject(&mut self, at: RecordRef, r: &Map<String, Value>) -> Option<String> {
        let reference = r.get("subject")?.get("reference")?.as_str()?;
        let key = patient_id_from_reference(reference);
        if key.is_none() {
            self.c.note(
                at,
                Note::UnresolvedSubject,
                "subject.reference",
                quoted(reference),
            );
        }
        key
    }

    /// Picks the code of a CodeableConcept (see the module docs).
    fn select_code(
        &mut self,
        at: RecordRef,
        concept: Option<&Value>,
        field: &str,
    ) -> Result<Code, Skip> {
        let codings = concept
            .and_then(|c| c.get("coding"))
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut invalid = None;
        let mut fallback = None;
        for (i, coding) in codings.iter().enumerate() {
            let code = coding
                .get("code")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|c| !c.is_empty());
            let system_uri = coding.get("system").and_then(Value::as_str);
            let (Some(code), Some(system_uri)) = (code, system_uri) else {
                continue;
            };
            let system = CodeSystem::from_uri(system_uri);
            if !system.is_known() {
                fallback.get_or_insert_with(|| Code {
                    system,
                    code: code.to_owned(),
                });
                continue;
            }
            let verdict = codes::check(&system, code);
            if verdict == CodeCheck::Invalid {
                invalid.get_or_insert_with(|| {
                    let detail = format!("{} is not a valid {system} code", quoted(code));
                    Skip::new(
                        SkipReason::InvalidCode,
                        format!("{field}.coding[{i}].code"),
                        detail,
                    )
                });
                continue;
            }
            if system_uri != system.uri() {
                self.c.note(
                    at,
                    Note::NonCanonicalSystemUri,
                    format!("{field}.coding[{i}].system"),
                    quoted(system_uri),
                );
            }
            if verdict == CodeCheck::BadCheckDigit {
                let detail = format!("{system} {} has a wrong check digit", quoted(code));
                self.c.note(
                    at,
                    Note::CheckDigitMismatch,
                    format!("{field}.coding[{i}].code"),
                    detail,
                );
            }
            return Ok(Code {
                system,
                code: code.to_owned(),
            });
        }
        if let Some(skip) = invalid {
            return Err(skip);
        }
        fallback.ok_or_else(|| {
            let detail = if codings.is_empty() {
                "no coding"
            } else {
                "no coding with both system and code"
            };
            Skip::new(SkipReason::MissingCode, field.to_owned(), detail)
        })
    }

    // --- Condition ---------------------------------------------------------------------------------------

    fn condition(&mut self, at: RecordRef, r: &Map<String, Value>) -> Result<Outcome, ImportError> {
        let verification = r
            .get("verificationStatus")
            .and_then(|v| v.get("coding"))
            .and_then(Value::as_array);
        for coding in verification.map_or(&[][..], Vec::as_slice) {
            match coding.get("code").and_then(Value::as_str) {
                Some("entered-in-error") => {
                    let skip = Skip::new(
                        SkipReason::EnteredInError,
                        "verificationStatus",
                        "entered-in-error",
                    );
                    return Ok(Outcome::Skipped(skip));
                }
                Some("refuted") => {
                    return Ok(Outcome::Skipped(Skip::new(
                        SkipReason::Refuted,
                        "verificationStatus",
                        "refuted",
                    )))
                }
                _ => {}
            }
        }
        let code = match self.select_code(at, r.get("code"), "code") {
            Ok(code) => code,
            Err(skip) => return Ok(Outcome::Skipped(skip)),
        };
        let onset = if let Some(v) = r.get("onsetDateTime") {
            self.date(at, "onsetDateTime", v)
        } else if let Some(v) = r.get("onsetPeriod").and_then(|p| p.get("start")) {
            self.date(at, "onsetPeriod.start", v)
        } else {
            if let Some(key) = ["onsetAge", "onsetRange", "onsetString"]
                .into_iter()
                .find(|k| r.contains_key(*k))
            {
                self.c
                    .note(at, Note::UnsupportedDateForm, key, key.to_owned());
            }
            Ok(None)
        };
        let onset = match onset {
            Ok(onset) => onset.and_then(SourceDate::date),
            Err(skip) => return Ok(Outcome::Skipped(skip)),
        };
        let patient = self.subject(at, r);
        let location = self.c.location(at);
        self.c.emit(SourceItem::Condition(SourceCondition {
            patient,
            code,
            onset,
            location,
        }))?;
        Ok(Outcome::Emitted)
    }

    // --- MedicationRequest and Medication ------------------------------------------------------------------

    fn medication_request(
        &mut self,
        at: RecordRef,
        r: &Map<String, Value>,
    ) -> Result<Outcome, ImportError> {
        if str_field(r, "status") == Some("entered-in-error") {
            return Ok(Outcome::Skipped(Skip::new(
                SkipReason::EnteredInError,
                "status",
                "entered-in-error",
            )));
        }
        let authored = match r.get("authoredOn").map(|v| self.date(at, "authoredOn", v)) {
            None => None,
            Some(Ok(date)) => date.and_then(SourceDate::date),
            Some(Err(skip)) => return Ok(Outcome::Skipped(skip)),
        };
        // R4 medicationCodeableConcept / medicationReference; R5 medication.concept / medication.reference.
        let r5 = r.get("medication");
        let concept = r
            .get("medicationCodeableConcept")
            .or_else(|| r5.and_then(|m| m.get("concept")));
        let reference = r
            .get("medicationReference")
            .or_else(|| r5.and_then(|m| m.get("reference")))
            .and_then(|m| m.get("reference"))
            .and_then(Value::as_str);
        let code = if let Some(concept) = concept {
            self.select_code(at, Some(concept), "medicationCodeableConcept")
        } else if let Some(reference) = reference {
            match self.resolve_medication(at, r, reference) {
                Some(result) => result,
                None => {
                    if self.pending.len() < self.c.limits().max_reference_table {
                        let patient = self.subject(at, r);
                        let reference = reference_key(reference);
                        self.pending.push(PendingMedication {
                            at,
                            reference,
                            patient,
                            authored,
                        });
                        return Ok(Outcome::Deferred);
                    }
                    let detail = format!("{} (too many unresolved references)", quoted(reference));
                    Err(Skip::new(
                        SkipReason::UnresolvedMedicationReference,
                        "medicationReference",
                        detail,
                    ))
                }
            }
        } else {
            Err(Skip::new(
                SkipReason::MissingCode,
                "medication[x]",
                "no medicationCodeableConcept or medicationReference",
            ))
        };
        let code = match code {
            Ok(code) => code,
            Err(skip) => return Ok(Outcome::Skipped(skip)),
        };
        let patient = self.subject(at, r);
        let location = self.c.location(at);
        self.c.emit(SourceItem::Medication(SourceMedication {
            patient,
            code,
            authored,
            location,
        }))?;
        Ok(Outcome::Emitted)
    }

    /// Resolves a medication reference against `contained` or earlier `Medication`s; `None` if not (yet) known.
    fn resolve_medication(
        &mut self,
        at: RecordRef,
        r: &Map<String, Value>,
        reference: &str,
    ) -> Option<Result<Code, Skip>> {
        if let Some(local) = reference.strip_prefix('#') {
            let contained = array_field(r, "contained").iter().find(|c| {
                c.get("id").and_then(Value::as_str) == Some(local)
                    && c.get("resourceType").and_then(Value::as_str) == Some("Medication")
            });
            return Some(match contained {
                Some(medication) => self.select_code(at, medication.get("code"), "contained.code"),
                None => Err(Skip::new(
                    SkipReason::UnresolvedMedicationReference,
                    "medicationReference",
                    format!("no contained Medication {}", quoted(reference)),
                )),
            });
        }
        self.medications.get(&reference_key(reference)).cloned()
    }

    fn remember_medication(
        &mut self,
        at: RecordRef,
        full_url: Option<&str>,
        r: &Map<String, Value>,
    ) {
        if self.medications.len() >= self.c.limits().max_reference_table {
            return;
        }
        let code = self.select_code(at, r.get("code"), "code");
        if let Some(id) = str_field(r, "id") {
            self.medications
                .insert(format!("Medication/{id}"), code.clone());
            // Synthea's ids are the UUIDs of their `urn:uuid:` fullUrls; this resolves such references in
            // NDJSON, which has no fullUrl.
            self.medications
                .insert(format!("urn:uuid:{id}"), code.clone());
        }
        if let Some(url) = full_url {
            self.medications.insert(reference_key(url), code);
        }
    }

    /// Accounts for the requests whose `Medication` was not yet known when they were read.
    fn resolve_pending(&mut self) -> Result<(), ImportError> {
        for pending in std::mem::take(&mut self.pending) {
            let at = pending.at;
            match self.medications.get(&pending.reference).cloned() {
                Some(Ok(code)) => {
                    let location = self.c.location(at);
                    let item = SourceMedication {
                        patient: pending.patient,
                        code,
                        authored: pending.authored,
                        location,
                    };
                    self.c.emit(SourceItem::Medication(item))?;
                    self.c.record_emitted();
                }
                Some(Err(skip)) => self.c.skip(at, skip),
                None => {
                    let detail = format!("{} is not in the file", quoted(&pending.reference));
                    let skip = Skip::new(
                        SkipReason::UnresolvedMedicationReference,
                        "medicationReference",
                        detail,
                    );
                    self.c.skip(at, skip);
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Field helpers

/// A resource held inside another (a contained resource, a nested entry's), as the importer reads it.
fn raw_resource(value: &Value) -> RawResource {
    match value {
        Value::Object(map) => RawResource::Object(map.clone()),
        _ => RawResource::NotAnObject,
    }
}

fn str_field<'v>(r: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    r.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn array_field<'v>(r: &'v Map<String, Value>, key: &str) -> &'v [Value] {
    r.get(key)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    let value = value.trim();
    if !value.is_empty() && !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

/// Name parts of HumanNames: `text`, `family` and each `given`.
fn collect_names(names: &[Value], out: &mut Vec<String>) {
    for name in names {
        if let Some(text) = name.get("text").and_then(Value::as_str) {
            push_unique(out, text);
        }
        match name.get("family") {
            Some(Value::String(family)) => push_unique(out, family),
            // STU3 and earlier allowed several family names.
            Some(Value::Array(families)) => families
                .iter()
                .filter_map(Value::as_str)
                .for_each(|f| push_unique(out, f)),
            _ => {}
        }
        for given in name
            .get("given")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            if let Some(given) = given.as_str() {
                push_unique(out, given);
            }
        }
    }
}

/// Street lines and full-text forms of Addresses.
fn collect_addresses(addresses: &[Value], out: &mut Vec<String>) {
    for address in addresses {
        if let Some(text) = address.get("text").and_then(Value::as_str) {
            push_unique(out, text);
        }
        for line in address
            .get("line")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            if let Some(line) = line.as_str() {
                push_unique(out, line);
            }
        }
    }
}

/// Whether an Identifier is a national person number, by system or by its v2-0203 type code.
fn is_national_identifier(identifier: &Value) -> bool {
    let system = identifier
        .get("system")
        .and_then(Value::as_str)
        .map(str::trim);
    if system.is_some_and(|s| NATIONAL_ID_SYSTEMS.contains(&s)) {
        return true;
    }
    let codings = identifier
        .get("type")
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array);
    codings
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .any(|code| matches!(code, "SS" | "NI") || (code.len() == 5 && code.starts_with("NN")))
}

/// `urn:uuid:X` → `X`; a URL → its last path segment.
fn local_id(full_url: &str) -> String {
    let url = full_url.trim();
    if let Some(id) = url.strip_prefix("urn:uuid:") {
        return id.to_owned();
    }
    let path = url.split("/_history/").next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

/// The patient id a subject reference names: `urn:uuid:X`, `Patient/X`, `https://host/fhir/Patient/X[/_history/n]`
/// give `X`. Conditional (`Patient?identifier=...`), contained (`#x`) and non-Patient references give `None`.
fn patient_id_from_reference(reference: &str) -> Option<String> {
    let reference = reference.trim();
    if reference.is_empty() || reference.contains('?') || reference.starts_with('#') {
        return None;
    }
    if let Some(id) = reference.strip_prefix("urn:uuid:") {
        return Some(id.to_owned());
    }
    let path = reference.split("/_history/").next().unwrap_or(reference);
    let mut segments = path.rsplit('/');
    let id = segments.next().filter(|id| !id.is_empty())?;
    (segments.next() == Some("Patient")).then(|| id.to_owned())
}

/// A reference reduced to the form both `fullUrl`s and references share: `urn:...` as is, otherwise
/// `Type/id` (base URL and `_history` dropped).
fn reference_key(reference: &str) -> String {
    let reference = reference.trim();
    if reference.starts_with("urn:") {
        return reference.to_owned();
    }
    let path = reference.split("/_history/").next().unwrap_or(reference);
    let mut segments = path.rsplit('/');
    match (segments.next(), segments.next()) {
        (Some(id), Some(kind)) => format!("{kind}/{id}"),
        _ => path.to_owned(),
    }
}

/// The observation value in `obj` (a resource or a component); the caller checked one is present.
fn read_value(obj: &Map<String, Value>, prefix: &str) -> Result<SourceValue, Skip> {
    let Some((key, value)) = obj.iter().find(|(k, _)| is_value_key(k)) else {
        return Err(Skip::new(
            SkipReason::MissingValue,
            format!("{prefix}value[x]"),
            "no value",
        ));
    };
    let field = |suffix: &str| format!("{prefix}{key}{suffix}");
    match key.as_str() {
        "valueQuantity" => read_quantity(value, &field),
        "valueString" | "valueDateTime" | "valueTime" => match value.as_str() {
            Some(text) if !text.trim().is_empty() => Ok(SourceValue::Text(text.to_owned())),
            Some(_) => Err(Skip::new(
                SkipReason::MissingValue,
                field(""),
                "empty string",
            )),
            None => Err(Skip::new(
                SkipReason::UnparsableValue,
                field(""),
                "not a string",
            )),
        },
        "valueBoolean" => match value.as_bool() {
            Some(b) => Ok(SourceValue::Text(b.to_string())),
            None => Err(Skip::new(
                SkipReason::UnparsableValue,
                field(""),
                "not a boolean",
            )),
        },
        "valueInteger" => match value.as_i64() {
            Some(n) => Ok(SourceValue::Text(n.to_string())),
            None => Err(Skip::new(
                SkipReason::UnparsableValue,
                field(""),
                "not an integer",
            )),
        },
        "valueCodeableConcept" => {
            let first_coding = value
                .get("coding")
                .and_then(Value::as_array)
                .and_then(|c| c.first());
            let text = [
                value.get("text"),
                first_coding.and_then(|c| c.get("display")),
                first_coding.and_then(|c| c.get("code")),
            ]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|t| !t.trim().is_empty());
            match text {
                Some(text) => Ok(SourceValue::Text(text.to_owned())),
                None => Err(Skip::new(
                    SkipReason::UnparsableValue,
                    field(""),
                    "CodeableConcept without text or coding",
                )),
            }
        }
        other => Err(Skip::new(
            SkipReason::UnsupportedValueType,
            field(""),
            format!("{other} is not supported"),
        )),
    }
}

fn read_quantity(value: &Value, field: &dyn Fn(&str) -> String) -> Result<SourceValue, Skip> {
    let Some(q) = value.as_object() else {
        return Err(Skip::new(
            SkipReason::UnparsableValue,
            field(""),
            "not an object",
        ));
    };
    if let Some(comparator) = q
        .get("comparator")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        let detail = format!("comparator {}", quoted(comparator));
        return Err(Skip::new(
            SkipReason::ValueWithComparator,
            field(".comparator"),
            detail,
        ));
    }
    let number = match q.get("value") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        None | Some(Value::Null) => {
            return Err(Skip::new(
                SkipReason::MissingValue,
                field(".value"),
                "quantity without value",
            ));
        }
        Some(_) => None,
    };
    let Some(number) = number else {
        let shown = match q.get("value") {
            Some(Value::String(s)) => s.clone(),
            other => other.map(Value::to_string).unwrap_or_default(),
        };
        return Err(Skip::new(
            SkipReason::UnparsableValue,
            field(".value"),
            format!("not a number {}", quoted(&shown)),
        ));
    };
    let text = |k: &str| {
        q.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let unit = if text("system") == Some(UCUM) {
        text("code").or_else(|| text("unit"))
    } else {
        text("unit").or_else(|| text("code"))
    };
    match unit {
        Some(unit) => Ok(SourceValue::Quantity {
            value: number,
            unit: unit.to_owned(),
        }),
        None => Err(Skip::new(
            SkipReason::MissingUnit,
            field(".unit"),
            format!("{number} without unit"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            patient_id_from_reference("urn:uuid:abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            patient_id_from_reference("Patient/abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            patient_id_from_reference("https://h/fhir/Patient/abc/_history/2").as_deref(),
            Some("abc")
        );
        assert_eq!(patient_id_from_reference("Patient?identifier=x|1"), None);
        assert_eq!(patient_id_from_reference("Group/1"), None);
        assert_eq!(
            reference_key("https://h/fhir/Medication/m1/_history/3"),
            "Medication/m1"
        );
        assert_eq!(reference_key("urn:uuid:m1"), "urn:uuid:m1");
        assert_eq!(local_id("urn:uuid:p1"), "p1");
    }
}
