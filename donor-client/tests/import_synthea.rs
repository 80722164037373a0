//! Integration tests of the Synthea CSV importer against the published 27-patient export in
//! `testdata/data/` (counts verified by hand against the files), plus constructed tables for header
//! variants, bad rows and garbage.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use datadonor_client::import::{
    self, synthea, CodeSystem, ImportError, ImportOptions, ImportReport, Note, ProblemKind,
    RecordRef, Sex, SkipReason, SourceItem, SourceValue, SyntheaTable,
};

mod data;
use data::testdata;

fn csv_dir() -> PathBuf {
    let dir = testdata("data/synthea_csv");
    assert!(
        dir.join("observations.csv").is_file(),
        "missing {}/observations.csv",
        dir.display()
    );
    dir
}

fn import_path(path: &Path) -> (Vec<SourceItem>, ImportReport) {
    let mut items = Vec::new();
    let report = import::import_path(path, &mut |item| {
        items.push(item);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("import of {} failed: {e}", path.display()));
    (items, report)
}

fn import_table(
    table: SyntheaTable,
    text: &[u8],
    name: &str,
) -> Result<(Vec<SourceItem>, ImportReport), ImportError> {
    let mut items = Vec::new();
    let report = synthea::import_table(
        table,
        Cursor::new(text),
        name,
        &ImportOptions::default(),
        &mut |item| {
            items.push(item);
            Ok(())
        },
    )?;
    Ok((items, report))
}

#[test]
fn whole_export_directory() {
    let (items, report) = import_path(&csv_dir());
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.files.len(), 4);
    assert!(
        report.files[0].ends_with("patients.csv"),
        "patients first: {:?}",
        report.files
    );
    assert_eq!(report.resource_count("Patient"), 27);
    assert_eq!(report.resource_count("Observation"), 990);
    assert_eq!(report.resource_count("Condition"), 438);
    assert_eq!(report.resource_count("MedicationRequest"), 663);
    assert_eq!(report.emitted.demographics, 27);
    // 18 answers to "What address do you live at?" (56799-0) are never emitted.
    assert_eq!(report.emitted.observations, 972);
    assert_eq!(report.emitted.conditions, 438);
    assert_eq!(report.emitted.medications, 663);
    assert_eq!(
        report.skipped,
        BTreeMap::from([(SkipReason::IdentifyingObservation, 18)])
    );
    // Synthea's "Unhealthy alcohol drinking behavior" 10939881000119104 has a wrong Verhoeff check digit.
    assert_eq!(
        report.notes,
        BTreeMap::from([(Note::CheckDigitMismatch, 4)])
    );
    let note = &report.samples[0];
    assert!(note.location.file.ends_with("conditions.csv"));
    assert_eq!(note.location.record, RecordRef::Line(98));
    assert_eq!(note.field, "CODE");

    let mut quantities = 0;
    let mut texts = 0;
    let mut synthea_codes = 0;
    let mut codes = BTreeMap::<&str, usize>::new();
    let mut patients = BTreeSet::new();
    let mut referenced = BTreeSet::new();
    for item in &items {
        match item {
            SourceItem::Demographics(d) => {
                patients.insert(d.patient.clone().expect("Id"));
            }
            SourceItem::Observation(o) => {
                match &o.value {
                    SourceValue::Quantity { .. } => quantities += 1,
                    SourceValue::Text(_) => texts += 1,
                    SourceValue::None => panic!("no value-less rows in Synthea"),
                }
                if o.code.system == CodeSystem::Other(synthea::SYNTHEA_LOCAL_SYSTEM.into()) {
                    synthea_codes += 1;
                } else {
                    assert_eq!(o.code.system, CodeSystem::Loinc);
                }
                *codes.entry(o.code.code.as_str()).or_insert(0) += 1;
                assert!(o.effective.is_some());
                referenced.insert(o.patient.clone().expect("PATIENT"));
            }
            SourceItem::Condition(c) => {
                assert_eq!(c.code.system, CodeSystem::Snomed);
                assert!(c.onset.is_some());
                referenced.insert(c.patient.clone().expect("PATIENT"));
            }
            SourceItem::Medication(m) => {
                assert_eq!(m.code.system, CodeSystem::RxNorm);
                assert!(m.authored.is_some());
                referenced.insert(m.patient.clone().expect("PATIENT"));
            }
        }
    }
    assert_eq!(quantities, 599, "TYPE numeric");
    assert_eq!(texts, 373, "TYPE text, less the 18 addresses");
    assert_eq!(synthea_codes, 75, "QALY, DALY, QOLS");
    assert_eq!(codes.get("8480-6"), Some(&27), "systolic rows");
    assert_eq!(codes.get("8462-4"), Some(&27), "diastolic rows");
    assert_eq!(codes.get("56799-0"), None);
    assert_eq!(
        patients.len(),
        27,
        "one Demographics per patient, distinct keys"
    );
    assert!(
        referenced.is_subset(&patients),
        "every row belongs to a known patient"
    );

    let first = items
        .iter()
        .find_map(|i| match i {
            SourceItem::Demographics(d)
                if d.patient.as_deref() == Some("3edac2e3-d223-6fae-d515-daf96ef6bc76") =>
            {
                Some(d)
            }
            _ => None,
        })
        .expect("first patient");
    assert_eq!(first.birth_date, Some(jiff::civil::date(2014, 10, 6)));
    assert_eq!(first.sex, Some(Sex::Male));
    assert_eq!(
        first.postcode.as_deref(),
        Some("02155"),
        "leading zero kept"
    );
    assert_eq!(first.primary_national_id.as_deref(), Some("999-17-5017"));
    assert_eq!(
        first.national_ids,
        vec!["3edac2e3-d223-6fae-d515-daf96ef6bc76", "999-17-5017"]
    );
    assert_eq!(first.names, vec!["Maynard46", "Mosciski958"]);
    assert_eq!(first.addresses, vec!["784 Stamm Lock Unit 46"]);

    // Names, identifiers, street addresses, and the address answers, appear in no other item.
    let mut identifying: Vec<String> = Vec::new();
    for item in &items {
        if let SourceItem::Demographics(d) = item {
            identifying.extend(
                d.national_ids
                    .iter()
                    .filter(|v| Some(*v) != d.patient.as_ref())
                    .cloned(),
            );
            identifying.extend(d.names.iter().cloned());
            identifying.extend(d.addresses.iter().cloned());
        }
    }
    identifying.push("455 Labadie Underpass Suite 69".into());
    for item in &items {
        if matches!(item, SourceItem::Demographics(_)) {
            continue;
        }
        let shown = format!("{item:?}");
        for value in &identifying {
            assert!(
                !shown.contains(value.as_str()),
                "{value:?} leaked into {shown}"
            );
        }
    }
}

#[test]
fn single_tables_through_import_path() {
    let dir = csv_dir();
    let expected = [
        ("patients.csv", "Patient", 27, 27),
        ("observations.csv", "Observation", 990, 972),
        ("conditions.csv", "Condition", 438, 438),
        ("medications.csv", "MedicationRequest", 663, 663),
    ];
    for (file, kind, rows, emitted) in expected {
        let path = dir.join(file);
        assert_eq!(
            import::detect_format(&path).expect("detect"),
            import::SourceFormat::SyntheaCsvFile(
                SyntheaTable::from_file_name(file).expect("table")
            )
        );
        let (items, report) = import_path(&path);
        assert!(report.is_balanced(), "{file}: {report}");
        assert_eq!(report.resource_count(kind), rows, "{file}");
        assert_eq!(report.emitted.total(), emitted, "{file}");
        assert_eq!(items.len() as u64, emitted, "{file}");
    }
    assert_eq!(
        import::detect_format(&dir).expect("detect"),
        import::SourceFormat::SyntheaCsvDirectory
    );
}

#[test]
fn synthea_v2_headers_lowercase_and_bad_rows() {
    // Synthea v2 observations: no CATEGORY column; headers in another case; columns in another order.
    let text = b"date,patient,encounter,code,description,value,units,type\n\
        2019-01-01T10:00:00Z,p1,e1,8480-6,Systolic,120,mm[Hg],numeric\n\
        2019-01-01T10:00:00Z,p1,e1,8480-6,Systolic,abc,mm[Hg],numeric\n\
        2019-01-01T10:00:00Z,p1,e1,72166-2,Smoking,Never smoker,,text\n\
        not-a-date,p1,e1,8867-4,Heart rate,70,/min,numeric\n\
        2019-01-01T10:00:00Z,p1,e1,,Nothing,1,1,numeric\n\
        2019-01-01T10:00:00Z,p1,e1,8867-4,Heart rate,70\n\
        2019-01-01T10:00:00Z,p1,e1,8867-4,Heart rate,,/min,numeric\n\
        2019-01-01T10:00:00Z,p1,e1,8867-4,Heart rate,72,,numeric\n\
        2019-01-01,p2,e2,29463-7,Weight,80.5,kg,\n";
    let (items, report) =
        import_table(SyntheaTable::Observations, text, "observations.csv").expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Observation"), 9);
    assert_eq!(report.emitted.observations, 3);
    assert_eq!(
        report.skipped,
        BTreeMap::from([
            (SkipReason::UnparsableValue, 1),
            (SkipReason::UnparsableDate, 1),
            (SkipReason::MissingCode, 1),
            (SkipReason::MalformedRecord, 1),
            (SkipReason::MissingValue, 1),
            (SkipReason::MissingUnit, 1),
        ])
    );
    let unparsable = report
        .samples
        .iter()
        .find(|p| p.kind == ProblemKind::Skipped(SkipReason::UnparsableValue))
        .expect("sample");
    assert_eq!(
        unparsable.to_string(),
        r#"observations.csv: line 3: field VALUE: not a number "abc" (skipped: unparsable value)"#
    );
    let values: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Observation(o) => {
                Some((o.patient.as_deref(), o.code.code.as_str(), o.value.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        values,
        vec![
            (
                Some("p1"),
                "8480-6",
                SourceValue::Quantity {
                    value: 120.0,
                    unit: "mm[Hg]".into()
                }
            ),
            (
                Some("p1"),
                "72166-2",
                SourceValue::Text("Never smoker".into())
            ),
            (
                Some("p2"),
                "29463-7",
                SourceValue::Quantity {
                    value: 80.5,
                    unit: "kg".into()
                }
            ),
        ]
    );
    let SourceItem::Observation(weight) = &items[2] else {
        panic!()
    };
    assert_eq!(
        weight.effective,
        Some(jiff::civil::date(2019, 1, 1).at(0, 0, 0, 0))
    );
    assert_eq!(weight.location.record, RecordRef::Line(10));
}

#[test]
fn conditions_with_a_system_column_and_patients_with_middle_names() {
    let conditions = b"START,STOP,PATIENT,ENCOUNTER,SYSTEM,CODE,DESCRIPTION\n\
        2020-01-01,,p1,e1,SNOMED-CT,44054006,Diabetes\n\
        2020-01-01,,p1,e1,ICD10,E11.9,Diabetes\n\
        2020-01-01,,p1,e1,SNOMED-CT,E11.9,Mislabelled\n";
    let (items, report) =
        import_table(SyntheaTable::Conditions, conditions, "conditions.csv").expect("import");
    assert_eq!(report.emitted.conditions, 2);
    assert_eq!(report.skipped_count(SkipReason::InvalidCode), 1);
    let systems: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Condition(c) => Some(c.code.system.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        systems,
        vec![CodeSystem::Snomed, CodeSystem::Other("ICD10".into())]
    );

    let patients = "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,MIDDLE,LAST,SUFFIX,MAIDEN,GENDER,ADDRESS,ZIP\n\
        p1,1970-02-03,,999-00-0001,S1,X1,Mrs.,Anna,Maria,Berg,,Lund,F,1 Main St,12345\n\
        p2,1971,,,,,,Bo,,Ek,,,X,,\n";
    let (items, report) =
        import_table(SyntheaTable::Patients, patients.as_bytes(), "patients.csv").expect("import");
    assert_eq!(
        report.emitted.demographics, 2,
        "patient rows are always emitted"
    );
    assert_eq!(report.note_count(Note::ImpreciseDate), 1);
    assert_eq!(report.note_count(Note::UnrecognisedSex), 1);
    let SourceItem::Demographics(anna) = &items[0] else {
        panic!()
    };
    assert_eq!(anna.names, vec!["Anna", "Maria", "Berg", "Lund"]);
    assert_eq!(anna.national_ids, vec!["p1", "999-00-0001", "S1", "X1"]);
    assert_eq!(anna.sex, Some(Sex::Female));
    assert_eq!(anna.postcode.as_deref(), Some("12345"));
}

#[test]
fn garbage_and_missing_columns_are_errors() {
    let err = import_table(
        SyntheaTable::Observations,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR garbage",
        "observations.csv",
    )
    .expect_err("garbage");
    assert!(
        matches!(err, ImportError::UnexpectedFormat { .. }),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.starts_with("observations.csv: line 1"), "{shown}");

    let err = import_table(
        SyntheaTable::Observations,
        b"DATE,PATIENT,VALUE\n2020-01-01,p1,5\n",
        "observations.csv",
    )
    .expect_err("no CODE");
    assert!(
        err.to_string()
            .starts_with("observations.csv: line 1: field CODE: required column is missing"),
        "{err}"
    );

    let err = import_table(SyntheaTable::Patients, b"", "patients.csv").expect_err("empty");
    assert!(
        err.to_string()
            .starts_with("patients.csv: line 1: field Id: "),
        "{err}"
    );

    // A file cut in the middle of its last row: that row is counted, the rest imports.
    let text = std::fs::read(csv_dir().join("medications.csv")).expect("read");
    let cut = &text[..text.len() - 40];
    let (_, report) = import_table(SyntheaTable::Medications, cut, "medications.csv")
        .expect("truncated row counted");
    assert_eq!(report.resource_count("MedicationRequest"), 663);
    assert_eq!(report.skipped_count(SkipReason::MalformedRecord), 1);
    assert_eq!(report.emitted.medications, 662);
}

#[test]
fn row_size_limit() {
    let mut options = ImportOptions::default();
    options.limits.max_record_bytes = 100_000;
    let mut text = b"START,PATIENT,CODE\n2020-01-01,p1,\"".to_vec();
    text.extend(std::iter::repeat_n(b'x', 1_000_000));
    let err = synthea::import_table(
        SyntheaTable::Medications,
        Cursor::new(text),
        "medications.csv",
        &options,
        &mut |_| Ok(()),
    )
    .expect_err("limit");
    assert!(matches!(err, ImportError::LimitExceeded { .. }), "{err:?}");
    assert!(err.to_string().starts_with("medications.csv"), "{err}");
}

#[test]
fn directory_without_tables_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("encounters.csv"), "Id\n1\n").expect("write");
    let err = import::import_path(dir.path(), &mut |_| Ok(())).expect_err("no tables");
    assert!(
        matches!(err, ImportError::UnexpectedFormat { .. }),
        "{err:?}"
    );
    std::fs::write(
        dir.path().join("Conditions.csv"),
        "START,PATIENT,CODE\n2020-01-01,p1,44054006\n",
    )
    .expect("write");
    let (_, report) = import_path(dir.path());
    assert_eq!(report.emitted.conditions, 1);
    assert_eq!(report.ignored_files, vec!["encounters.csv"]);
}
