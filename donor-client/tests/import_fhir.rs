//! Integration tests of the FHIR R4 JSON importer against the published Synthea bundles in
//! `testdata/data/fhir/` (counts verified by hand against the files), plus constructed bundles for
//! the cases the files lack: BOM, NDJSON, `batch`/`collection`/`searchset` bundles, truncated and
//! garbage input.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use datadonor_client::import::{
    self, fhir, CodeSystem, ImportError, ImportOptions, ImportReport, Note, ProblemKind, RecordRef,
    Sex, SkipReason, SourceItem, SourceValue,
};

mod data;
use data::testdata;

fn fhir_file(prefix: &str) -> PathBuf {
    let dir = testdata("data/fhir");
    let found = std::fs::read_dir(&dir)
        .expect("read fhir dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        });
    found.unwrap_or_else(|| panic!("no file {prefix}* in {}", dir.display()))
}

fn import_file(path: &Path) -> (Vec<SourceItem>, ImportReport) {
    let mut items = Vec::new();
    let report = import::import_path(path, &mut |item| {
        items.push(item);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("import of {} failed: {e}", path.display()));
    (items, report)
}

fn import_bytes(bytes: &[u8], name: &str) -> Result<(Vec<SourceItem>, ImportReport), ImportError> {
    let mut items = Vec::new();
    let report = fhir::import_json(
        Cursor::new(bytes),
        name,
        &ImportOptions::default(),
        &mut |item| {
            items.push(item);
            Ok(())
        },
    )?;
    Ok((items, report))
}

fn observation_codes(items: &[SourceItem]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        if let SourceItem::Observation(o) = item {
            *counts.entry(o.code.code.clone()).or_insert(0) += 1;
        }
    }
    counts
}

fn skipped(pairs: &[(SkipReason, u64)]) -> BTreeMap<SkipReason, u64> {
    pairs.iter().copied().collect()
}

/// Every identifying string of every Demographics item, and proof that no other item carries one.
fn assert_identifiers_only_in_demographics(items: &[SourceItem]) {
    let mut identifying = Vec::new();
    for item in items {
        if let SourceItem::Demographics(d) = item {
            identifying.extend(d.national_ids.iter().cloned());
            identifying.extend(d.names.iter().cloned());
            identifying.extend(d.addresses.iter().cloned());
        }
    }
    assert!(!identifying.is_empty());
    // The patient key (equal to the MRN in Synthea) and the location (Synthea names files after the patient)
    // are local and excluded here; the minimiser must not pass them on.
    let location = import::RecordLocation {
        file: "".into(),
        record: RecordRef::Line(0),
    };
    for item in items {
        let shown = match item {
            SourceItem::Demographics(_) => continue,
            SourceItem::Observation(o) => {
                format!(
                    "{:?}",
                    import::SourceObservation {
                        patient: None,
                        location: location.clone(),
                        ..o.clone()
                    }
                )
            }
            SourceItem::Condition(c) => {
                format!(
                    "{:?}",
                    import::SourceCondition {
                        patient: None,
                        location: location.clone(),
                        ..c.clone()
                    }
                )
            }
            SourceItem::Medication(m) => {
                format!(
                    "{:?}",
                    import::SourceMedication {
                        patient: None,
                        location: location.clone(),
                        ..m.clone()
                    }
                )
            }
        };
        for value in &identifying {
            assert!(
                !shown.contains(value.as_str()),
                "{value:?} leaked into {shown}"
            );
        }
    }
}

#[test]
fn dab4861f_bundle_hba1c_bp_conditions_medications() {
    let (items, report) = import_file(&fhir_file("dab4861f"));
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.records_total(), 652);
    assert_eq!(report.resource_count("Observation"), 254);
    assert_eq!(report.resource_count("Condition"), 11);
    assert_eq!(report.resource_count("MedicationRequest"), 48);
    assert_eq!(report.resource_count("Medication"), 6);
    assert_eq!(report.resource_count("Encounter"), 61);

    let codes = observation_codes(&items);
    assert_eq!(codes.get("4548-4"), Some(&10), "HbA1c");
    assert_eq!(codes.get("8480-6"), Some(&10), "systolic");
    assert_eq!(codes.get("8462-4"), Some(&10), "diastolic");
    assert_eq!(
        codes.get("85354-9"),
        None,
        "the BP panel itself is not emitted, its components are"
    );
    assert_eq!(
        codes.get("85353-1"),
        None,
        "vital-signs panels (hasMember only) are counted, not emitted"
    );
    assert_eq!(report.emitted.observations, 222 + 11 + 20);
    assert_eq!(report.emitted.conditions, 11);
    assert_eq!(
        report.emitted.medications, 48,
        "including 6 resolved through medicationReference"
    );
    assert_eq!(report.emitted.demographics, 1);
    assert_eq!(
        report.skipped,
        skipped(&[
            (SkipReason::UnsupportedResourceType, 332),
            (SkipReason::ReferenceOnly, 6),
            (SkipReason::PanelWithoutValue, 11),
        ])
    );

    // Systolic and diastolic carry their panel's effective time, pairwise.
    let times = |code: &str| {
        let mut t: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Observation(o) if o.code.code == code => Some(o.effective),
                _ => None,
            })
            .collect();
        t.sort();
        t
    };
    assert_eq!(times("8480-6"), times("8462-4"));
    assert!(times("8480-6").iter().all(Option::is_some));

    let patient = "dab4861f-04d5-4a05-8bfc-7e188353feac";
    assert!(items.iter().all(|i| i.patient() == Some(patient)));
    for item in &items {
        match item {
            SourceItem::Condition(c) => assert_eq!(c.code.system, CodeSystem::Snomed),
            SourceItem::Medication(m) => assert_eq!(m.code.system, CodeSystem::RxNorm),
            SourceItem::Observation(o) => assert_eq!(o.code.system, CodeSystem::Loinc),
            SourceItem::Demographics(_) => {}
        }
    }
    // A medicationReference resolved to its Medication's RxNorm code, dated by authoredOn as written.
    // entry[590] references the Medication in entry[589] (ondansetron).
    let referencing = items.iter().find_map(|i| match i {
        SourceItem::Medication(m) if m.location.record == RecordRef::BundleEntry(590) => Some(m),
        _ => None,
    });
    let referencing = referencing.expect("referenced Medication resolved");
    assert_eq!(referencing.code.code, "1740467");
    assert_eq!(referencing.authored, Some(jiff::civil::date(2019, 6, 3)));

    let SourceItem::Demographics(d) = &items[0] else {
        panic!("the Patient comes first: {:?}", items[0])
    };
    assert_eq!(d.birth_date, Some(jiff::civil::date(1972, 6, 12)));
    assert_eq!(d.sex, Some(Sex::Female));
    assert_eq!(d.postcode, None, "this Patient's address has no postalCode");
    assert_eq!(d.primary_national_id.as_deref(), Some("999-29-5020"));
    for id in [patient, "999-29-5020", "S99913977"] {
        assert!(d.national_ids.iter().any(|v| v == id), "{id}");
    }
    for name in ["Elenore794", "Price929", "Wolf938"] {
        assert!(d.names.iter().any(|v| v == name), "{name}");
    }
    assert_eq!(d.addresses, vec!["367 Haag Overpass Unit 84".to_owned()]);
    assert!(
        !format!("{d:?}").contains("Elenore794"),
        "Demographics Debug must redact"
    );
    assert_identifiers_only_in_demographics(&items);
}

#[test]
fn every_published_bundle_imports_with_hand_checked_counts() {
    struct Expected {
        prefix: &'static str,
        total: u64,
        observations: u64,
        conditions: u64,
        medications: u64,
        records_emitting: u64,
        skipped: &'static [(SkipReason, u64)],
        hba1c: usize,
        systolic: usize,
    }
    use SkipReason::*;
    let cases = [
        Expected {
            prefix: "2fda17e1",
            total: 364,
            observations: 153,
            conditions: 9,
            medications: 13,
            records_emitting: 163,
            skipped: &[(UnsupportedResourceType, 188), (PanelWithoutValue, 13)],
            hba1c: 2,
            systolic: 13,
        },
        Expected {
            prefix: "9aaf0e69",
            total: 686,
            observations: 253,
            conditions: 7,
            medications: 94,
            records_emitting: 345,
            skipped: &[(UnsupportedResourceType, 331), (PanelWithoutValue, 10)],
            hba1c: 0,
            systolic: 10,
        },
        Expected {
            prefix: "a73b31ec",
            total: 378,
            observations: 164,
            conditions: 7,
            medications: 30,
            records_emitting: 192,
            skipped: &[(UnsupportedResourceType, 176), (PanelWithoutValue, 10)],
            hba1c: 4,
            systolic: 10,
        },
        Expected {
            prefix: "dcec440c",
            total: 279,
            observations: 151,
            conditions: 6,
            medications: 7,
            records_emitting: 153,
            skipped: &[(UnsupportedResourceType, 113), (PanelWithoutValue, 13)],
            hba1c: 0,
            systolic: 12,
        },
        Expected {
            prefix: "dab4861f",
            total: 652,
            observations: 253,
            conditions: 11,
            medications: 48,
            records_emitting: 303,
            skipped: &[
                (UnsupportedResourceType, 332),
                (ReferenceOnly, 6),
                (PanelWithoutValue, 11),
            ],
            hba1c: 10,
            systolic: 10,
        },
    ];
    for case in cases {
        let (items, report) = import_file(&fhir_file(case.prefix));
        let name = case.prefix;
        assert!(report.is_balanced(), "{name}: {report}");
        assert_eq!(report.records_total(), case.total, "{name}");
        assert_eq!(report.emitted.demographics, 1, "{name}");
        assert_eq!(report.emitted.observations, case.observations, "{name}");
        assert_eq!(report.emitted.conditions, case.conditions, "{name}");
        assert_eq!(report.emitted.medications, case.medications, "{name}");
        assert_eq!(report.records_emitting, case.records_emitting, "{name}");
        assert_eq!(report.skipped, skipped(case.skipped), "{name}");
        let codes = observation_codes(&items);
        assert_eq!(
            codes.get("4548-4").copied().unwrap_or(0),
            case.hba1c,
            "{name} HbA1c"
        );
        assert_eq!(
            codes.get("8480-6").copied().unwrap_or(0),
            case.systolic,
            "{name} systolic"
        );
        assert_eq!(
            codes.get("8462-4").copied().unwrap_or(0),
            case.systolic,
            "{name} diastolic"
        );
        assert!(
            report.samples.is_empty(),
            "{name}: clean Synthea data has no problems: {report}"
        );
        assert_identifiers_only_in_demographics(&items);
    }
}

#[test]
fn lanell_robustness_bundle_reports_what_it_cannot_map() {
    let (items, report) = import_file(&fhir_file("Lanell756"));
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.records_total(), 706);
    assert_eq!(report.resource_count("Observation"), 326);
    assert_eq!(report.resource_count("Claim"), 66);
    // 320 Observations with values and 1 Condition carry OpenMRS concept ids under LOINC/SNOMED systems;
    // 6 "Return visit date" Observations have no value at all.
    assert_eq!(
        report.skipped,
        skipped(&[
            (SkipReason::UnsupportedResourceType, 373),
            (SkipReason::InvalidCode, 321),
            (SkipReason::MissingValue, 6),
        ])
    );
    assert_eq!(report.emitted.demographics, 1);
    assert_eq!(report.emitted.observations, 0);
    assert_eq!(report.emitted.conditions, 1);
    assert_eq!(report.emitted.medications, 4);
    let SourceItem::Condition(chd) = items
        .iter()
        .find(|i| matches!(i, SourceItem::Condition(_)))
        .expect("condition")
    else {
        unreachable!()
    };
    assert_eq!(chd.code.code, "53741008");
    let SourceItem::Demographics(d) = &items[0] else {
        panic!("Patient first")
    };
    assert!(
        d.national_ids.iter().any(|v| v == "X5297322X"),
        "passport number collected"
    );
    assert_eq!(d.sex, Some(Sex::Female));
    assert_identifiers_only_in_demographics(&items);

    let invalid = report
        .samples
        .iter()
        .find(|p| p.kind == ProblemKind::Skipped(SkipReason::InvalidCode))
        .expect("an invalid-code sample");
    assert_eq!(invalid.field, "code.coding[0].code");
    assert!(matches!(invalid.location.record, RecordRef::BundleEntry(_)));
    assert!(
        invalid.to_string().contains("is not a valid LOINC code"),
        "{invalid}"
    );
    let shown = report.to_string();
    assert!(
        shown.contains("invalid code for its system: 321"),
        "{shown}"
    );
    assert!(report.samples.len() <= 64);
    assert!(report.samples_omitted > 0);
}

#[test]
fn malformed_loinc_system_uri_maps_to_loinc() {
    assert_eq!(CodeSystem::from_uri("http://loinc"), CodeSystem::Loinc);
    assert_eq!(CodeSystem::from_uri("http://loinc.org"), CodeSystem::Loinc);
    assert_eq!(
        CodeSystem::from_uri("https://loinc.org/"),
        CodeSystem::Loinc
    );
    assert_eq!(
        CodeSystem::from_uri("http://snomed.info/sct"),
        CodeSystem::Snomed
    );
    assert_eq!(
        CodeSystem::from_uri("http://www.nlm.nih.gov/research/umls/rxnorm"),
        CodeSystem::RxNorm
    );
    assert_eq!(
        CodeSystem::from_uri("urn:x"),
        CodeSystem::Other("urn:x".into())
    );

    let bundle = br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation",
        "code":{"coding":[{"system":"http://loinc","code":"8867-4"}]},"effectiveDateTime":"2020-01-02T03:04:05+01:00",
        "valueQuantity":{"value":61,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}}]}"#;
    let (items, report) = import_bytes(bundle, "quirk.json").expect("import");
    let [SourceItem::Observation(o)] = items.as_slice() else {
        panic!("{items:?}")
    };
    assert_eq!(o.code.system, CodeSystem::Loinc);
    assert_eq!(o.code.code, "8867-4");
    assert_eq!(
        o.value,
        SourceValue::Quantity {
            value: 61.0,
            unit: "/min".into()
        }
    );
    assert_eq!(
        o.effective,
        Some(jiff::civil::date(2020, 1, 2).at(3, 4, 5, 0)),
        "offset dropped, not applied"
    );
    assert_eq!(report.note_count(Note::NonCanonicalSystemUri), 1);
}

#[test]
fn bom_prefixed_bundle() {
    let path = fhir_file("dcec440c");
    let plain = std::fs::read(&path).expect("read");
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(&plain);
    let (items, report) = import_bytes(&with_bom, "bom.json").expect("BOM bundle imports");
    let (plain_items, plain_report) = import_file(&path);
    assert_eq!(report.emitted, plain_report.emitted);
    assert_eq!(items.len(), plain_items.len());

    // Through import_path, whose format detection also skips the BOM.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bom.json");
    std::fs::write(&file, &with_bom).expect("write");
    let (_, report) = import_file(&file);
    assert_eq!(report.emitted, plain_report.emitted);
}

/// Rewrites a bundle as Bulk Data NDJSON: one resource per line.
fn as_ndjson(bundle_path: &Path) -> Vec<u8> {
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle_path).expect("read")).expect("json");
    let mut out = Vec::new();
    for entry in bundle["entry"].as_array().expect("entries") {
        serde_json::to_writer(&mut out, &entry["resource"]).expect("serialise");
        out.push(b'\n');
    }
    out
}

#[test]
fn ndjson_bulk_data() {
    let bundle = fhir_file("dab4861f");
    let ndjson = as_ndjson(&bundle);
    let (_, bundle_report) = import_file(&bundle);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("export.ndjson");
    std::fs::write(&file, &ndjson).expect("write");
    let (items, report) = import_file(&file);
    assert!(report.is_balanced());
    assert_eq!(report.emitted, bundle_report.emitted, "{report}");
    assert_eq!(report.skipped, bundle_report.skipped);
    assert_eq!(observation_codes(&items).get("8480-6"), Some(&10));
    // Line numbers are 1-based and point at the resource's line.
    let first_observation = items.iter().find_map(|i| match i {
        SourceItem::Observation(o) => Some(o.location.record),
        _ => None,
    });
    assert!(matches!(first_observation, Some(RecordRef::Line(n)) if n > 1));

    // Auto-detected from content under a .json name too.
    let (_, report) = import_bytes(&ndjson, "export.json").expect("ndjson detected");
    assert_eq!(report.emitted, bundle_report.emitted);

    // A bad line in the middle is counted; the rest imports.
    let mut damaged = ndjson.clone();
    damaged.splice(
        0..0,
        b"{\"resourceType\":\"Encounter\"}\n{not json}\n"
            .iter()
            .copied(),
    );
    let (_, report) = import_bytes(&damaged, "damaged.ndjson").expect("damaged ndjson");
    assert_eq!(report.skipped_count(SkipReason::MalformedRecord), 1);
    assert_eq!(report.samples[0].location.record, RecordRef::Line(2));
    assert_eq!(report.emitted, bundle_report.emitted);
}

const SMALL_ENTRIES: &str = r##"
  {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"p1","gender":"male","birthDate":"1980",
     "identifier":[{"system":"urn:oid:1.2.208.176.1.2","value":"0101801234"},{"value":"MRN-77"}],
     "name":[{"family":"Jensen","given":["Ole","Bent"],"prefix":["Hr."]}],
     "address":[{"use":"old","line":["Old Road 1"],"postalCode":"1000"},{"line":["Nørregade 7"],"postalCode":"8000","city":"Aarhus"}],
     "contact":[{"name":{"text":"Kirsten Jensen"},"address":{"line":["Søvej 3"]}}]},
   "search":{"mode":"match"},"request":{"method":"PUT","url":"Patient/p1"}},
  {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"effectiveDateTime":"2021-03-04T05:06:07Z",
     "code":{"coding":[{"system":"http://loinc.org","code":"55284-4"}]},
     "component":[
       {"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},
       {"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":80,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},
       {"code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]}}]}},
  {"resource":{"resourceType":"Condition","subject":{"reference":"Patient/p1"},"onsetDateTime":"2019-06",
     "code":{"coding":[{"system":"http://example.org/local","code":"X1"},{"system":"http://snomed.info/sct","code":"44054006"}]}}},
  {"resource":{"resourceType":"MedicationRequest","subject":{"reference":"Patient/p1"},"authoredOn":"2020-02-03",
     "contained":[{"resourceType":"Medication","id":"med","code":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"860975"}]}}],
     "medicationReference":{"reference":"#med"}}},
  {"resource":{"resourceType":"MedicationRequest","subject":{"reference":"Patient/p1"},"medicationReference":{"reference":"Medication/m9"}}},
  {"resource":{"resourceType":"Medication","id":"m9","code":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"197361"}]}}},
  {"resource":{"resourceType":"MedicationRequest","subject":{"reference":"Patient/p1"},"medicationReference":{"reference":"Medication/nowhere"}}},
  {"resource":{"resourceType":"Observation","status":"entered-in-error","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"valueQuantity":{"value":1,"unit":"/min"}}},
  {"resource":{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"valueQuantity":{"comparator":"<","value":3,"unit":"mmol/L"}}},
  {"resource":{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"valueRange":{"low":{"value":1}}}},
  {"resource":{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"valueQuantity":{"value":"abc","unit":"mg"}}},
  {"resource":{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"effectiveDateTime":"yesterday","valueQuantity":{"value":5,"unit":"mg"}}},
  {"resource":{"resourceType":"Observation","subject":{"reference":"Patient?identifier=x|1"},"code":{"text":"no coding"},"valueString":"x"}},
  {"resource":{"resourceType":"Observation","code":{"coding":[{"system":"http://loinc.org","code":"56799-0"}]},"valueString":"Nørregade 7"}},
  "not an object",
  {"request":{"method":"DELETE","url":"Observation/o1"}}
"##;

fn small_bundle(kind: &str) -> String {
    format!(
        r#"{{"resourceType":"Bundle","id":"b","type":"{kind}","total":16,"entry":[{SMALL_ENTRIES}]}}"#
    )
}

#[test]
fn batch_collection_and_searchset_bundles() {
    for kind in ["batch", "collection", "searchset", "transaction"] {
        let (items, report) =
            import_bytes(small_bundle(kind).as_bytes(), "small.json").expect(kind);
        assert!(report.is_balanced(), "{kind}: {report}");
        assert_eq!(report.records_total(), 16, "{kind}");
        assert_eq!(report.emitted.demographics, 1, "{kind}");
        assert_eq!(
            report.emitted.observations, 2,
            "{kind}: systolic + diastolic"
        );
        assert_eq!(report.emitted.conditions, 1, "{kind}");
        assert_eq!(
            report.emitted.medications, 2,
            "{kind}: contained + later Medication"
        );
        assert_eq!(
            report.skipped,
            skipped(&[
                (SkipReason::ReferenceOnly, 1),
                (SkipReason::UnresolvedMedicationReference, 1),
                (SkipReason::EnteredInError, 1),
                (SkipReason::ValueWithComparator, 1),
                (SkipReason::UnsupportedValueType, 1),
                (SkipReason::UnparsableValue, 1),
                (SkipReason::UnparsableDate, 1),
                (SkipReason::MissingCode, 1),
                (SkipReason::IdentifyingObservation, 1),
                (SkipReason::MalformedRecord, 1),
                (SkipReason::UnsupportedResourceType, 1),
            ]),
            "{kind}"
        );
        assert_eq!(
            report.skipped_component_count(SkipReason::MissingValue),
            1,
            "{kind}"
        );
        assert_eq!(
            report.note_count(Note::ImpreciseDate),
            2,
            "{kind}: birthDate 1980, onset 2019-06"
        );
        assert_eq!(report.note_count(Note::UnresolvedSubject), 1, "{kind}");

        let SourceItem::Demographics(d) = &items[0] else {
            panic!("{kind}")
        };
        assert_eq!(d.patient.as_deref(), Some("p1"));
        assert_eq!(d.birth_date, None);
        assert_eq!(
            d.primary_national_id.as_deref(),
            Some("0101801234"),
            "Danish CPR recognised"
        );
        assert_eq!(
            d.cpr.as_deref(),
            Some("0101801234"),
            "{kind}: the CPR itself"
        );
        assert_eq!(
            d.national_ids,
            vec!["0101801234".to_owned(), "MRN-77".to_owned()]
        );
        assert_eq!(d.names, vec!["Jensen", "Ole", "Bent", "Kirsten Jensen"]);
        assert_eq!(d.addresses, vec!["Old Road 1", "Nørregade 7", "Søvej 3"]);
        assert_eq!(
            d.postcode.as_deref(),
            Some("8000"),
            "the current address, not the old one"
        );

        let observations: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Observation(o) => {
                    Some((o.code.code.as_str(), &o.value, o.patient.as_deref()))
                }
                _ => None,
            })
            .collect();
        let mm_hg = |v: f64| SourceValue::Quantity {
            value: v,
            unit: "mm[Hg]".into(),
        };
        assert_eq!(
            observations,
            vec![
                ("8480-6", &mm_hg(120.0), Some("p1")),
                ("8462-4", &mm_hg(80.0), Some("p1"))
            ]
        );
        let condition = items.iter().find_map(|i| match i {
            SourceItem::Condition(c) => Some(c),
            _ => None,
        });
        let condition = condition.expect("condition");
        assert_eq!(
            condition.code.system,
            CodeSystem::Snomed,
            "the known system wins over the first coding"
        );
        assert_eq!(condition.onset, None);
        let medications: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Medication(m) => Some(m.code.code.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(medications, vec!["860975", "197361"]);
        assert!(
            !items.iter().any(|i| format!("{i:?}").contains("Nørregade")),
            "address answer never emitted"
        );

        let unparsable = report
            .samples
            .iter()
            .find(|p| p.kind == ProblemKind::Skipped(SkipReason::UnparsableValue))
            .expect("sample");
        assert_eq!(
            unparsable.to_string(),
            r#"small.json: entry[10]: field valueQuantity.value: not a number "abc" (skipped: unparsable value)"#
        );
    }
}

#[test]
fn truncated_bundle_is_an_error_naming_file_and_entry() {
    let bytes = std::fs::read(fhir_file("dab4861f")).expect("read");
    let cut = &bytes[..bytes.len() / 2];
    let mut seen = 0;
    let err = fhir::import_json(
        Cursor::new(cut),
        "dab4861f.json",
        &ImportOptions::default(),
        &mut |_| {
            seen += 1;
            Ok(())
        },
    )
    .expect_err("truncated");
    assert!(matches!(err, ImportError::Truncated { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.starts_with("dab4861f.json: entry["), "{shown}");
    assert!(shown.contains("truncated"), "{shown}");
    assert!(seen > 0, "entries before the cut were streamed");
}

#[test]
fn garbage_and_non_bundles_are_errors() {
    let err = import_bytes(b"\x00\x01garbage\xff", "garbage.json").expect_err("garbage");
    assert!(
        matches!(err, ImportError::UnexpectedFormat { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("garbage.json: line 1: "),
        "{err}"
    );

    let err = import_bytes(b"", "empty.json").expect_err("empty");
    assert!(err.to_string().contains("empty.json"), "{err}");

    let err = import_bytes(b"{\n\"id\": \"x\"\n}", "no-type.json").expect_err("no type");
    assert_eq!(
        err.to_string(),
        "no-type.json: field resourceType: no resourceType: not a FHIR resource or Bundle"
    );

    let broken = b"{\n\"resourceType\": \"Bundle\", \"entry\": [\n{\"resource\": {\"resourceType\": \"Encounter\"}},\n{\"resource\": {\"resourceType\": }}\n]}";
    let err = import_bytes(broken, "broken.json").expect_err("syntax error");
    assert!(
        matches!(
            err,
            ImportError::Malformed {
                at: Some(RecordRef::BundleEntry(1)),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("broken.json: entry[1]: invalid JSON: "),
        "{err}"
    );

    let err = import_bytes(b"{\"entry\": 5, \"resourceType\": \"Bundle\"}", "odd.json")
        .expect_err("entry not an array");
    assert!(
        matches!(err, ImportError::UnexpectedFormat { .. }),
        "{err:?}"
    );
}

#[test]
fn entry_size_limit_and_sink_errors_stop_the_import() {
    let mut options = ImportOptions::default();
    options.limits.max_bundle_entry_bytes = 1024;
    let bytes = std::fs::read(fhir_file("dcec440c")).expect("read");
    let err = fhir::import_json(Cursor::new(&bytes), "big.json", &options, &mut |_| Ok(()))
        .expect_err("limit");
    assert!(matches!(err, ImportError::LimitExceeded { .. }), "{err:?}");
    assert!(err.to_string().contains("big.json: entry["), "{err}");

    let mut count = 0;
    let err = fhir::import_json(
        Cursor::new(&bytes),
        "dcec.json",
        &ImportOptions::default(),
        &mut |_| {
            count += 1;
            if count == 3 {
                return Err(ImportError::Rejected {
                    reason: "enough".into(),
                });
            }
            Ok(())
        },
    )
    .expect_err("rejected");
    assert!(matches!(err, ImportError::Rejected { .. }), "{err:?}");
    assert_eq!(count, 3);
}

#[test]
fn format_detection_of_published_files() {
    for prefix in ["dab4861f", "Lanell756"] {
        assert_eq!(
            import::detect_format(&fhir_file(prefix)).expect("detect"),
            import::SourceFormat::FhirJson
        );
    }
}

/// One Observation, pretty-printed over several lines (so not NDJSON).
const SINGLE_OBSERVATION: &str = r#"{
  "resourceType": "Observation",
  "id": "hba1c-1",
  "status": "final",
  "subject": {"reference": "Patient/p1"},
  "effectiveDateTime": "2021-03-04T10:00:00+01:00",
  "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
  "valueQuantity": {"value": 6.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
}"#;

#[test]
fn a_file_holding_one_resource_is_imported() {
    let (items, report) =
        import_bytes(SINGLE_OBSERVATION.as_bytes(), "observation.json").expect("one Observation");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Observation"), 1);
    assert_eq!(report.records_total(), 1);
    assert_eq!(report.emitted.observations, 1);
    let SourceItem::Observation(o) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(
        (o.code.code.as_str(), o.patient.as_deref()),
        ("4548-4", Some("p1"))
    );
    assert_eq!(
        o.value,
        SourceValue::Quantity {
            value: 6.1,
            unit: "%".into()
        }
    );
    assert_eq!(o.location.record, RecordRef::Resource);
    assert_eq!(o.location.to_string(), "observation.json: resource");

    // resourceType last, as some writers put it, and a Patient.
    let patient = b"{\n\"id\": \"p1\", \"gender\": \"female\", \"birthDate\": \"1972-01-01\",\n\"address\": [{\"postalCode\": \"8000\"}],\n\"resourceType\": \"Patient\"\n}";
    let (items, report) = import_bytes(patient, "patient.json").expect("one Patient");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.emitted.demographics, 1);
    let SourceItem::Demographics(d) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(d.patient.as_deref(), Some("p1"));
    assert_eq!(d.postcode.as_deref(), Some("8000"));
    assert_eq!(d.sex, Some(Sex::Female));

    // A resource the importer does not read is counted and skipped, not an error.
    let (items, report) = import_bytes(
        b"{\n\"resourceType\": \"Encounter\", \"id\": \"e\"\n}",
        "encounter.json",
    )
    .expect("one Encounter");
    assert!(items.is_empty());
    assert_eq!(report.skipped_count(SkipReason::UnsupportedResourceType), 1);
    assert!(report.is_balanced(), "{report}");

    // Through import_path, as the CLI reads it.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("observation.json");
    std::fs::write(&path, SINGLE_OBSERVATION).expect("write");
    let (items, _) = import_file(&path);
    assert_eq!(items.len(), 1);
}

/// A List holding a Patient and two Observations as contained resources, referred to by its entries,
/// and one entry referring to a resource outside the file.
const LIST_WITH_CONTAINED: &str = r##"{
  "resourceType": "List",
  "id": "my-results",
  "status": "current",
  "mode": "snapshot",
  "contained": [
    {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1960-05-05"},
    {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "#p1"},
     "effectiveDateTime": "2022-01-10", "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
     "valueQuantity": {"value": 7.2, "unit": "%"}},
    {"resourceType": "Observation", "id": "o2", "status": "final", "subject": {"reference": "Patient/p1"},
     "effectiveDateTime": "2022-04-10", "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
     "valueQuantity": {"value": "abc", "unit": "%"}}
  ],
  "entry": [
    {"item": {"reference": "#o1"}},
    {"item": {"reference": "#o2"}},
    {"item": {"reference": "Observation/elsewhere"}}
  ]
}"##;

#[test]
fn a_list_with_contained_resources_is_imported() {
    let (items, report) =
        import_bytes(LIST_WITH_CONTAINED.as_bytes(), "list.json").expect("a List");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("List"), 1);
    assert_eq!(report.resource_count("Patient"), 1);
    assert_eq!(report.resource_count("Observation"), 2);
    assert_eq!(report.resource_count("(reference)"), 1);
    assert_eq!(report.emitted.demographics, 1);
    assert_eq!(report.emitted.observations, 1);
    assert_eq!(report.skipped_count(SkipReason::Container), 1);
    assert_eq!(report.skipped_count(SkipReason::UnparsableValue), 1);
    assert_eq!(report.skipped_count(SkipReason::ReferenceOutsideFile), 1);
    let shown: Vec<String> = report.samples.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(
            &r#"list.json: entry[2]: field item.reference: "Observation/elsewhere" is not in the file (skipped: reference to a resource outside the file)"#
                .to_string()
        ),
        "{shown:?}"
    );
    assert!(
        shown.contains(
            &r#"list.json: contained[2]: field valueQuantity.value: not a number "abc" (skipped: unparsable value)"#
                .to_string()
        ),
        "{shown:?}"
    );
    let SourceItem::Observation(o) = &items[1] else {
        panic!("{items:?}")
    };
    assert_eq!(o.location.record, RecordRef::Contained(1));
    assert_eq!(o.code.code, "4548-4");

    // The same List on one line is read as NDJSON: its resources are records all the same.
    let line: String = LIST_WITH_CONTAINED
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let (items, report) = import_bytes(line.as_bytes(), "list.ndjson").expect("a List line");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.emitted.observations, 1);
    assert_eq!(report.emitted.demographics, 1);
    assert!(items
        .iter()
        .all(|i| i.location().map(|l| l.record) == Some(RecordRef::Line(1))));
}

#[test]
fn lists_and_bundles_inside_a_bundle_are_read() {
    let observation: serde_json::Value = serde_json::from_str(SINGLE_OBSERVATION).expect("json");
    let list: serde_json::Value = serde_json::from_str(LIST_WITH_CONTAINED).expect("json");
    for kind in ["searchset", "collection"] {
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {"fullUrl": "urn:uuid:l", "resource": list, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Bundle", "type": "collection",
                    "entry": [{"resource": observation}]}},
                {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
            ]
        });
        let text = serde_json::to_string_pretty(&bundle).expect("json");
        let (items, report) = import_bytes(text.as_bytes(), "nested.json").expect(kind);
        assert!(report.is_balanced(), "{kind}: {report}");
        assert_eq!(report.skipped_count(SkipReason::Container), 2, "{kind}");
        assert_eq!(
            report.emitted.observations, 2,
            "{kind}: one from each container"
        );
        assert_eq!(report.emitted.demographics, 1, "{kind}");
        assert_eq!(
            report.skipped_count(SkipReason::ReferenceOutsideFile),
            0,
            "{kind}: a nested List's references are not records"
        );
        assert_eq!(
            items[2].location().map(|l| l.record),
            Some(RecordRef::BundleEntry(1)),
            "{kind}"
        );
    }
}

#[test]
fn terminal_escapes_in_the_source_are_escaped_in_errors_and_reports() {
    let printable = |text: &str| !text.chars().any(|c| c.is_control() && c != '\n');
    let bundle = r#"{"resourceType":"Bundle","entry":[
 {"resource":{"resourceType":"Enc\u001b[31mounter"}},
 {"resource":{"resourceType":"Observation","status":"final","effectiveDateTime":"2021-03-04",
   "code":{"coding":[{"system":"http://loinc.org","code":"4548\u001b[2J"}]},"valueQuantity":{"value":6,"unit":"%"}}},
 {"resource":{"resourceType":"Observation","status":"final","effectiveDateTime":"2021-03-04",
   "code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"valueQuantity":{"value":6,"comparator":"<\u0007"}}},
 {"resource":{"resourceType":"Condition","onsetDateTime":"20\u009b21",
   "code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]}}}
]}"#;
    let (_, report) = import_bytes(bundle.as_bytes(), "b\u{1b}[0mundle.json").expect("import");
    let shown = report.to_string();
    assert!(printable(&shown), "{shown:?}");
    for escaped in [
        r"b\u{1b}[0mundle.json",
        r"Enc\u{1b}[31mounter: 1",
        r#""4548\u{1b}[2J""#,
        r#""<\u{7}""#,
        r#""20\u{9b}21""#,
    ] {
        assert!(shown.contains(escaped), "{escaped} in {shown}");
    }

    // Fatal errors: the parser's message quotes the file.
    for (text, quoted) in [
        (
            r#"{"resourceType":"Bundle","entry":"e\u001b[31m"}"#,
            Some(r"e\u{1b}[31m"),
        ),
        (
            "{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":{\"resourceType\":\"\u{1b}\"}}]}",
            None,
        ),
    ] {
        let err = import_bytes(text.as_bytes(), "x\u{7}.json").expect_err(text);
        let shown = err.to_string();
        assert!(printable(&shown), "{shown:?}");
        assert!(shown.starts_with(r"x\u{7}.json: "), "{shown}");
        if let Some(q) = quoted {
            assert!(shown.contains(q), "{q} in {shown}");
        }
    }
}
