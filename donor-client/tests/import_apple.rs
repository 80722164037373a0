//! Integration tests of the Apple Health importer against the `export.xml` fixture in `testdata/data/`
//! (counts verified by hand against the file), an inline iOS 16 export with the malformed DTD, a zip with a
//! localised member name built here, and truncated/garbage input.

use std::io::{Cursor, Write};
use std::path::PathBuf;

use datadonor_client::import::{
    self, apple, CodeSystem, ImportError, ImportOptions, ImportReport, RecordRef, Sex, SkipReason,
    SourceItem, SourceValue,
};

mod data;
use data::testdata;

fn export_xml() -> PathBuf {
    let path = testdata("data/apple_health/export.xml");
    assert!(path.is_file(), "missing {}", path.display());
    path
}

fn import_xml_bytes(
    xml: &[u8],
    name: &str,
    options: &ImportOptions,
) -> Result<(Vec<SourceItem>, ImportReport), ImportError> {
    let mut items = Vec::new();
    let report = apple::import_xml(Cursor::new(xml), name, options, &mut |item| {
        items.push(item);
        Ok(())
    })?;
    Ok((items, report))
}

fn observations(items: &[SourceItem]) -> Vec<(&str, &SourceValue)> {
    items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Observation(o) => Some((o.code.code.as_str(), &o.value)),
            _ => None,
        })
        .collect()
}

fn assert_fixture_counts(items: &[SourceItem], report: &ImportReport) {
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Record"), 8);
    assert_eq!(report.resource_count("Me"), 1);
    assert_eq!(report.resource_count("ExportDate"), 1);
    assert_eq!(report.records_total(), 10);
    assert_eq!(report.emitted.demographics, 1);
    assert_eq!(report.emitted.observations, 8);
    assert_eq!(
        report.skipped_count(SkipReason::UnsupportedResourceType),
        1,
        "ExportDate"
    );
    assert!(report.samples.is_empty(), "{report}");

    let q = |value: f64, unit: &str| SourceValue::Quantity {
        value,
        unit: unit.into(),
    };
    let text = |t: &str| SourceValue::Text(t.into());
    assert_eq!(
        observations(items),
        vec![
            ("HKQuantityTypeIdentifierHeartRate", &q(74.0, "count/min")),
            ("HKQuantityTypeIdentifierHeartRate", &q(75.0, "count/min")),
            (
                "HKQuantityTypeIdentifierActiveEnergyBurned",
                &q(0.12, "kcal")
            ),
            (
                "HKQuantityTypeIdentifierActiveEnergyBurned",
                &q(0.08, "kcal")
            ),
            ("HKQuantityTypeIdentifierAppleExerciseTime", &q(1.0, "min")),
            ("HKQuantityTypeIdentifierAppleStandTime", &q(2.0, "min")),
            (
                "HKCategoryTypeIdentifierSleepAnalysis",
                &text("HKCategoryValueSleepAnalysisInBed")
            ),
            (
                "HKCategoryTypeIdentifierSleepAnalysis",
                &text("HKCategoryValueSleepAnalysisAsleepCore")
            ),
        ]
    );
    let SourceItem::Demographics(me) = &items[0] else {
        panic!("Me first: {:?}", items[0])
    };
    assert_eq!(me.birth_date, Some(jiff::civil::date(1990, 5, 20)));
    assert_eq!(me.sex, Some(Sex::Male));
    assert!(me.patient.is_none() && me.national_ids.is_empty() && me.names.is_empty());
    let SourceItem::Observation(first) = &items[1] else {
        panic!()
    };
    assert_eq!(first.code.system, CodeSystem::AppleHealthKit);
    assert_eq!(
        first.effective,
        Some(jiff::civil::date(2024, 1, 1).at(1, 1, 36, 0)),
        "startDate as written"
    );
    assert_eq!(
        first.location.record,
        RecordRef::XmlElement {
            line: 9,
            byte_offset: 496
        }
    );
    for item in items {
        let shown = format!("{item:?}");
        assert!(
            !shown.contains("Alexandre") && !shown.contains("Apple Watch"),
            "sourceName/device leaked: {shown}"
        );
    }
}

#[test]
fn published_export_xml() {
    let path = export_xml();
    assert_eq!(
        import::detect_format(&path).expect("detect"),
        import::SourceFormat::AppleHealthXml
    );
    let mut items = Vec::new();
    let report = import::import_path(&path, &mut |item| {
        items.push(item);
        Ok(())
    })
    .expect("import");
    assert_fixture_counts(&items, &report);
}

/// An iOS 16 style export: internal DTD whose ATTLISTs lack their closing `>` (which strict parsers reject),
/// a vertical tab in an attribute, a blood-pressure Correlation, a Workout and an ActivitySummary.
const IOS16_EXPORT: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<!DOCTYPE HealthData [
<!-- HealthKit Export Version: 12 -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary|ClinicalRecord|Audiogram|VisionPrescription)*)>
<!ATTLIST HealthData
  locale CDATA #REQUIRED
>
<!ELEMENT VisionPrescription ((RightEye|LeftEye|Attachment|MetadataEntry)*)>
<!ATTLIST VisionPrescription
  type             CDATA #REQUIRED
  dateIssued       CDATA #REQUIRED
  expirationDate   CDATA #REQUIRED
  brand            CDATA #IMPLIED
<!ELEMENT RightEye EMPTY>
<!ATTLIST RightEye
  sphere           CDATA #IMPLIED
  sphereUnit       CDATA #IMPLIED
<!ELEMENT Correlation ((MetadataEntry|Record)*)>
]>
<HealthData locale=\"da_DK\">
 <ExportDate value=\"2022-11-01 10:00:00 +0100\"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth=\"\" HKCharacteristicTypeIdentifierBiologicalSex=\"HKBiologicalSexFemale\" HKCharacteristicTypeIdentifierBloodType=\"HKBloodTypeNotSet\"/>
 <Record type=\"HKQuantityTypeIdentifierBloodPressureSystolic\" sourceName=\"Omron\x0b\" unit=\"mmHg\" startDate=\"2022-10-30 08:00:00 +0100\" endDate=\"2022-10-30 08:00:00 +0100\" value=\"121\"/>
 <Record type=\"HKQuantityTypeIdentifierBloodPressureDiastolic\" sourceName=\"Omron\" unit=\"mmHg\" startDate=\"2022-10-30 08:00:00 +0100\" endDate=\"2022-10-30 08:00:00 +0100\" value=\"79\"/>
 <Correlation type=\"HKCorrelationTypeIdentifierBloodPressure\" sourceName=\"Omron\" startDate=\"2022-10-30 08:00:00 +0100\" endDate=\"2022-10-30 08:00:00 +0100\">
  <MetadataEntry key=\"HKWasUserEntered\" value=\"1\"/>
  <Record type=\"HKQuantityTypeIdentifierBloodPressureSystolic\" sourceName=\"Omron\" unit=\"mmHg\" startDate=\"2022-10-30 08:00:00 +0100\" endDate=\"2022-10-30 08:00:00 +0100\" value=\"121\"/>
  <Record type=\"HKQuantityTypeIdentifierBloodPressureDiastolic\" sourceName=\"Omron\" unit=\"mmHg\" startDate=\"2022-10-30 08:00:00 +0100\" endDate=\"2022-10-30 08:00:00 +0100\" value=\"79\"/>
 </Correlation>
 <Record type=\"HKCategoryTypeIdentifierMindfulSession\" sourceName=\"Breathe\" startDate=\"2022-10-30 09:00:00 +0100\" endDate=\"2022-10-30 09:01:00 +0100\"/>
 <Record type=\"HKQuantityTypeIdentifierStepCount\" sourceName=\"iPhone\" unit=\"count\" startDate=\"2022-10-30 09:00:00 +0100\" value=\"many\"/>
 <Record type=\"HKQuantityTypeIdentifierBodyMass\" sourceName=\"Scale\" unit=\"kg\" startDate=\"yesterday\" value=\"70\"/>
 <Workout workoutActivityType=\"HKWorkoutActivityTypeRunning\" duration=\"30\" durationUnit=\"min\" startDate=\"2022-10-30 07:00:00 +0100\">
  <WorkoutEvent type=\"HKWorkoutEventTypeSegment\" date=\"2022-10-30 07:10:00 +0100\"/>
  <Record type=\"HKQuantityTypeIdentifierHeartRate\" unit=\"count/min\" value=\"150\" startDate=\"2022-10-30 07:10:00 +0100\"/>
 </Workout>
 <ActivitySummary dateComponents=\"2022-10-30\" activeEnergyBurned=\"400\" activeEnergyBurnedUnit=\"kcal\"/>
</HealthData>
";

#[test]
fn ios16_export_with_malformed_dtd_and_correlation() {
    let (items, report) = import_xml_bytes(
        IOS16_EXPORT.as_bytes(),
        "export.xml",
        &ImportOptions::default(),
    )
    .expect("the malformed DTD is skipped, not validated");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Record"), 5);
    assert_eq!(report.resource_count("Correlation"), 1);
    assert_eq!(report.resource_count("Correlation/Record"), 2);
    assert_eq!(report.resource_count("Workout"), 1);
    assert_eq!(report.resource_count("ActivitySummary"), 1);
    assert_eq!(report.resource_count("ExportDate"), 1);
    assert_eq!(report.resource_count("Me"), 1);
    assert_eq!(
        report.records_total(),
        12,
        "the Record inside the Workout is not a record of its own"
    );
    assert_eq!(report.emitted.demographics, 1);
    assert_eq!(report.emitted.observations, 3);
    assert_eq!(report.skipped_count(SkipReason::Container), 1);
    assert_eq!(report.skipped_count(SkipReason::CorrelationMember), 2);
    assert_eq!(
        report.skipped_count(SkipReason::UnsupportedResourceType),
        3,
        "ExportDate, Workout, ActivitySummary"
    );
    assert_eq!(
        report.skipped_count(SkipReason::UnparsableValue),
        1,
        "StepCount \"many\""
    );
    assert_eq!(
        report.skipped_count(SkipReason::UnparsableDate),
        1,
        "BodyMass startDate"
    );
    assert_eq!(
        observations(&items),
        vec![
            (
                "HKQuantityTypeIdentifierBloodPressureSystolic",
                &SourceValue::Quantity {
                    value: 121.0,
                    unit: "mmHg".into()
                }
            ),
            (
                "HKQuantityTypeIdentifierBloodPressureDiastolic",
                &SourceValue::Quantity {
                    value: 79.0,
                    unit: "mmHg".into()
                }
            ),
            ("HKCategoryTypeIdentifierMindfulSession", &SourceValue::None),
        ]
    );
    let SourceItem::Demographics(me) = &items[0] else {
        panic!()
    };
    assert_eq!(
        (me.birth_date, me.sex),
        (None, Some(Sex::Female)),
        "empty date of birth is no date"
    );
    // Line numbers survive the blanked DOCTYPE.
    let SourceItem::Observation(systolic) = &items[1] else {
        panic!()
    };
    assert_eq!(
        systolic.location.record,
        RecordRef::XmlElement {
            line: 23,
            byte_offset: IOS16_EXPORT.find("<Record").expect("record") as u64
        }
    );
    let bad_value = report
        .samples
        .iter()
        .find(|p| p.field == "value")
        .expect("sample");
    assert_eq!(
        bad_value.location.record,
        RecordRef::XmlElement {
            line: 31,
            byte_offset: IOS16_EXPORT
                .find("<Record type=\"HKQuantityTypeIdentifierStepCount\"")
                .expect("x") as u64
        }
    );
    assert!(
        bad_value
            .to_string()
            .starts_with("export.xml: line 31 (byte "),
        "{bad_value}"
    );

    // Opting in to Correlation members emits them as well.
    let mut options = ImportOptions::default();
    options.emit_apple_correlation_members = true;
    let (_, report) =
        import_xml_bytes(IOS16_EXPORT.as_bytes(), "export.xml", &options).expect("import");
    assert!(report.is_balanced());
    assert_eq!(report.emitted.observations, 5);
}

fn build_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in members {
        zip.start_file(*name, options).expect("start file");
        zip.write_all(content).expect("write");
    }
    zip.finish().expect("finish").into_inner()
}

#[test]
fn zip_with_localised_export_name() {
    let xml = std::fs::read(export_xml()).expect("read");
    // Decoys: export_cda.xml is larger and even mentions <HealthData; another larger .xml lacks it.
    let mut cda =
        b"<?xml version=\"1.0\"?><ClinicalDocument><!-- <HealthData --></ClinicalDocument>"
            .to_vec();
    cda.resize(xml.len() * 4, b' ');
    let mut other = b"<?xml version=\"1.0\"?><gpx></gpx>".to_vec();
    other.resize(xml.len() * 3, b' ');
    let archive = build_zip(&[
        ("apple_health_export/export_cda.xml", &cda),
        (
            "apple_health_export/workout-routes/route_2024-01-01.xml",
            &other,
        ),
        ("apple_health_export/eksport.xml", &xml),
        (
            "apple_health_export/electrocardiograms/ecg_2024-01-01.csv",
            b"Name,x\n",
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eksport.zip");
    std::fs::write(&path, &archive).expect("write");
    assert_eq!(
        import::detect_format(&path).expect("detect"),
        import::SourceFormat::AppleHealthZip
    );
    let mut items = Vec::new();
    let report = import::import_path(&path, &mut |item| {
        items.push(item);
        Ok(())
    })
    .expect("import");
    assert_eq!(report.files.len(), 1);
    assert!(
        report.files[0].ends_with("eksport.zip!/apple_health_export/eksport.xml"),
        "{:?}",
        report.files
    );
    assert_fixture_counts(&items, &report);

    let without = build_zip(&[("apple_health_export/export_cda.xml", &cda)]);
    let err = apple::import_zip(
        Cursor::new(without),
        "cda-only.zip",
        &ImportOptions::default(),
        &mut |_| Ok(()),
    )
    .expect_err("no export");
    assert!(
        err.to_string()
            .starts_with("cda-only.zip: no Apple Health export"),
        "{err}"
    );
}

#[test]
fn truncated_and_garbage_xml_are_errors() {
    let xml = std::fs::read(export_xml()).expect("read");
    let options = ImportOptions::default();

    // Cut inside a Record's start tag.
    let cut_at = xml
        .windows(7)
        .rposition(|w| w == b"<Record")
        .expect("record")
        + 40;
    let err =
        import_xml_bytes(&xml[..cut_at], "export.xml", &options).expect_err("truncated in a tag");
    assert!(matches!(err, ImportError::Truncated { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.starts_with("export.xml: line 46 (byte "), "{shown}");

    // Cut between elements: the root is never closed.
    let between = xml.windows(9).position(|w| w == b"</Record>").expect("end") + 9;
    let err = import_xml_bytes(&xml[..between], "export.xml", &options)
        .expect_err("truncated between elements");
    assert!(matches!(err, ImportError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("export.xml: line 15"), "{err}");

    // Cut inside the DOCTYPE.
    let err = import_xml_bytes(&IOS16_EXPORT.as_bytes()[..300], "export.xml", &options)
        .expect_err("truncated DTD");
    assert!(
        err.to_string()
            .contains("end of file inside the DOCTYPE declaration"),
        "{err}"
    );

    let err = import_xml_bytes(b"this is not xml\n", "garbage.xml", &options).expect_err("garbage");
    assert!(
        matches!(err, ImportError::UnexpectedFormat { .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("garbage.xml: "), "{err}");

    let err = import_xml_bytes(
        b"<?xml version=\"1.0\"?>\n<rss><channel/></rss>",
        "feed.xml",
        &options,
    )
    .expect_err("root");
    assert_eq!(
        err.to_string(),
        "feed.xml: line 2 (byte 22): the root element is <rss>, not <HealthData>: not an Apple Health export"
    );

    let err = import_xml_bytes(
        b"<HealthData>\n<Record type=\"x\"></Me>\n</HealthData>",
        "bad.xml",
        &options,
    )
    .expect_err("mismatched end tag");
    assert!(matches!(err, ImportError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().starts_with("bad.xml: line 2"), "{err}");

    let err = apple::import_zip(
        Cursor::new(b"PK\x03\x04 garbage".to_vec()),
        "bad.zip",
        &options,
        &mut |_| Ok(()),
    )
    .expect_err("garbage zip");
    assert!(err.to_string().starts_with("bad.zip: "), "{err}");

    // A truncated zip (central directory cut off).
    let archive = build_zip(&[("apple_health_export/export.xml", &xml)]);
    let err = apple::import_zip(
        Cursor::new(archive[..archive.len() / 2].to_vec()),
        "cut.zip",
        &options,
        &mut |_| Ok(()),
    )
    .expect_err("truncated zip");
    assert!(err.to_string().starts_with("cut.zip: "), "{err}");
}

#[test]
fn element_size_limit() {
    let mut options = ImportOptions::default();
    options.limits.max_record_bytes = 10_000;
    let mut xml =
        b"<HealthData>\n<Record type=\"HKQuantityTypeIdentifierHeartRate\" value=\"".to_vec();
    xml.extend(std::iter::repeat_n(b'1', 100_000));
    let err = import_xml_bytes(&xml, "huge.xml", &options).expect_err("limit");
    assert!(matches!(err, ImportError::LimitExceeded { .. }), "{err:?}");
    assert!(err.to_string().starts_with("huge.xml: line 2"), "{err}");
}

/// A `<Record>` the importer reads (type, unit, value, startDate), with `extra` placed before its attributes.
fn heart_rate(extra: &str) -> String {
    format!(
        "<Record {extra} type=\"HKQuantityTypeIdentifierHeartRate\" unit=\"count/min\" value=\"70\" startDate=\"2024-01-01 08:00:00 +0100\"/>"
    )
}

#[test]
fn invalid_utf8_skips_only_its_record() {
    let mut xml = b"<HealthData>\n<Record type=\"HKQuantityType\xffIdentifierHeartRate\" unit=\"count/min\" value=\"70\"/>\n".to_vec();
    // Not UTF-8 (Latin-1 "é") in an attribute that is never read: the record imports.
    xml.extend_from_slice(heart_rate("sourceName=\"Bea_s Watch\"").as_bytes());
    let latin1 = xml.iter().rposition(|&b| b == b'_').expect("placeholder");
    xml[latin1] = 0xe9;
    xml.extend_from_slice(b"\n</HealthData>\n");
    let (items, report) =
        import_xml_bytes(&xml, "latin1.xml", &ImportOptions::default()).expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Record"), 2);
    assert_eq!(report.emitted.observations, 1);
    assert_eq!(report.skipped_count(SkipReason::MalformedRecord), 1);
    assert_eq!(report.samples.len(), 1, "{report}");
    assert_eq!(report.samples[0].field, "type");
    assert!(
        report.samples[0]
            .to_string()
            .starts_with("latin1.xml: line 2 (byte 13)"),
        "{}",
        report.samples[0]
    );
    assert_eq!(items.len(), 1);
}

#[test]
fn references_and_ampersands() {
    let options = ImportOptions::default();

    // A reference before the root element is text before it.
    let err = import_xml_bytes(b"&amp;<HealthData/>", "ref.xml", &options).expect_err("text");
    assert!(
        matches!(err, ImportError::UnexpectedFormat { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("text before the root element: not an XML document"),
        "{err}"
    );

    // References and a lone `&` in text inside the root are not read, and do not stop the import.
    let xml = format!(
        "<HealthData>\n fish &amp; chips & peas &#10; &custom;\n{}\n</HealthData>\n",
        heart_rate("")
    );
    let (_, report) = import_xml_bytes(xml.as_bytes(), "amp.xml", &options).expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.emitted.observations, 1);

    // In attribute values, character and entity references are expanded, and a literal newline or tab
    // becomes a space (XML attribute-value normalisation), trimmed at the ends.
    let xml = "<HealthData>\n<Record type=\"HKQuantityTypeIdentifierHeartRate\" unit=\"\n\tcount/min\n\" value=\"7&#48;\" startDate=\"2024-01-01&#32;08:00:00 +0100\"/>\n<Record type=\"HKCategoryTypeIdentifierSleepAnalysis\" value=\"In &amp; out\nof bed\"/>\n</HealthData>\n";
    let (items, report) = import_xml_bytes(xml.as_bytes(), "refs.xml", &options).expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(
        observations(&items),
        vec![
            (
                "HKQuantityTypeIdentifierHeartRate",
                &SourceValue::Quantity {
                    value: 70.0,
                    unit: "count/min".into()
                }
            ),
            (
                "HKCategoryTypeIdentifierSleepAnalysis",
                &SourceValue::Text("In & out of bed".into())
            ),
        ]
    );
    let SourceItem::Observation(first) = &items[0] else {
        panic!()
    };
    assert_eq!(
        first.effective,
        Some(jiff::civil::date(2024, 1, 1).at(8, 0, 0, 0))
    );
}

/// Hostile tags, generated for a range of sizes (RUSTSEC-2026-0194/0195: quick-xml before 0.41 checked
/// duplicate attribute names in O(n²) and namespace declarations without a bound). Each case asserts its
/// outcome only; there is no timing. The largest sizes are chosen so that a quadratic parser needs minutes
/// for them (800,000 attributes took about 10 minutes in the advisory), while a linear one needs well
/// under a second, so a regression shows as a test that does not finish.
#[test]
fn many_attributes_and_deep_namespaces_finish() {
    let options = ImportOptions::default();
    // Sizes on both sides of quick-xml's switch from a linear scan to a hash set (32 attributes).
    for n in [1usize, 31, 32, 33, 1_000, 400_000] {
        let distinct: String = (0..n).map(|i| format!(" a{i}=\"\"")).collect();
        // No duplicate: the wanted attributes come after all the others and are read.
        // A duplicate of the first name at the end: that record is skipped as malformed.
        // The same name n times: skipped at the second one.
        let same = " a=\"\"".repeat(n.max(2));
        let xml = format!(
            "<HealthData>\n{}\n{}\n{}\n{}\n</HealthData>\n",
            heart_rate(&distinct),
            heart_rate(&format!("{distinct} a0=\"x\"")),
            heart_rate(&same),
            heart_rate(""),
        );
        assert!(xml.len() < 16 << 20, "within the default element limit");
        let (items, report) =
            import_xml_bytes(xml.as_bytes(), "attrs.xml", &options).expect("import");
        assert!(report.is_balanced(), "n={n}: {report}");
        assert_eq!(report.resource_count("Record"), 4, "n={n}");
        assert_eq!(report.emitted.observations, 2, "n={n}: {report}");
        assert_eq!(
            report.skipped_count(SkipReason::MalformedRecord),
            2,
            "n={n}"
        );
        assert!(
            report
                .samples
                .iter()
                .all(|p| p.field == "attributes" && p.detail.contains("duplicated")),
            "n={n}: {report}"
        );
        assert_eq!(items.len(), 2);
    }

    // Deeply nested elements, each declaring namespaces (300 declarations on some, more than quick-xml's
    // NsReader accepts on one element; this importer does not resolve namespaces at all), inside a Workout:
    // nothing below the top level is a record, and the Record after the subtree (declaring 300 namespaces
    // too) is read.
    let depth = 200_000;
    let wide: String = (0..300)
        .map(|i| format!(" xmlns:w{i}=\"urn:w{i}\""))
        .collect();
    let mut xml = String::from("<HealthData>\n<Workout>");
    for i in 0..depth {
        let p = i % 7;
        let decls = if i % 1_000 == 0 { wide.as_str() } else { "" };
        xml.push_str(&format!(
            "<p{p}:n xmlns:p{p}=\"urn:{i}\" xmlns=\"urn:d\"{decls}>"
        ));
    }
    for i in (0..depth).rev() {
        xml.push_str(&format!("</p{}:n>", i % 7));
    }
    xml.push_str(&format!(
        "</Workout>\n{}\n</HealthData>\n",
        heart_rate(&wide)
    ));
    let (items, report) = import_xml_bytes(xml.as_bytes(), "deep.xml", &options).expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Workout"), 1);
    assert_eq!(report.resource_count("Record"), 1);
    assert_eq!(report.records_total(), 2, "{report}");
    assert_eq!(report.emitted.observations, 1);
    assert_eq!(items.len(), 1);

    // The same nesting left open is a truncated file, not a hang or a crash.
    let cut = xml.find("</p").expect("end tags");
    let err = import_xml_bytes(&xml.as_bytes()[..cut], "deep.xml", &options).expect_err("open");
    assert!(matches!(err, ImportError::Truncated { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "end of file with {} element(s) still open",
            depth + 2
        )),
        "{err}"
    );
}

/// A blood-pressure reading as an Apple `<Correlation>` from `source` at `start`.
fn bp_correlation(source: &str, start: &str, systolic: u32, diastolic: u32) -> String {
    format!(
        r#" <Correlation type="HKCorrelationTypeIdentifierBloodPressure" sourceName="{source}" startDate="{start}" endDate="{start}">
  <MetadataEntry key="HKWasUserEntered" value="1"/>
  <Record type="HKQuantityTypeIdentifierBloodPressureSystolic" sourceName="{source}" unit="mmHg" startDate="{start}" endDate="{start}" value="{systolic}"/>
  <Record type="HKQuantityTypeIdentifierBloodPressureDiastolic" sourceName="{source}" unit="mmHg" startDate="{start}" endDate="{start}" value="{diastolic}"/>
 </Correlation>
"#
    )
}

/// A top-level blood-pressure `Record`.
fn bp_record(kind: &str, source: &str, start: &str, value: u32) -> String {
    format!(
        " <Record type=\"HKQuantityTypeIdentifierBloodPressure{kind}\" sourceName=\"{source}\" unit=\"mmHg\" startDate=\"{start}\" endDate=\"{start}\" value=\"{value}\"/>\n"
    )
}

fn health_data(body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<HealthData locale=\"da_DK\">\n{body}</HealthData>\n")
}

/// Blood-pressure values emitted, in order.
fn bp_values(items: &[SourceItem]) -> Vec<(String, f64)> {
    items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Observation(o) => match &o.value {
                SourceValue::Quantity { value, .. } => Some((
                    o.code
                        .code
                        .trim_start_matches("HKQuantityTypeIdentifierBloodPressure")
                        .to_string(),
                    *value,
                )),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

const T1: &str = "2023-03-01 08:00:00 +0100";
const T2: &str = "2023-03-02 08:00:00 +0100";

#[test]
fn correlation_members_without_top_level_copies_are_imported() {
    let xml = health_data(
        &(bp_correlation("Omron", T1, 131, 84) + &bp_correlation("Omron", T2, 128, 82)),
    );
    let (items, report) =
        import_xml_bytes(xml.as_bytes(), "export.xml", &ImportOptions::default()).expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.resource_count("Correlation/Record"), 4);
    assert_eq!(
        report.skipped_count(SkipReason::CorrelationMember),
        0,
        "{report}"
    );
    assert_eq!(report.emitted.observations, 4);
    assert_eq!(
        bp_values(&items),
        vec![
            ("Systolic".into(), 131.0),
            ("Diastolic".into(), 84.0),
            ("Systolic".into(), 128.0),
            ("Diastolic".into(), 82.0),
        ]
    );
    let SourceItem::Observation(first) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(
        first.location.record,
        RecordRef::XmlElement {
            line: 5,
            byte_offset: xml.find("<Record").expect("record") as u64
        },
        "located at the member itself"
    );
}

#[test]
fn correlation_members_with_top_level_copies_are_dropped_as_duplicates_before_or_after() {
    // Copies before the correlation (Apple's order) and after it (held until the end).
    for copies_first in [true, false] {
        let copies =
            bp_record("Systolic", "Omron", T1, 131) + &bp_record("Diastolic", "Omron", T1, 84);
        let correlation = bp_correlation("Omron", T1, 131, 84);
        let body = if copies_first {
            copies + &correlation
        } else {
            correlation + &copies
        };
        let (items, report) = import_xml_bytes(
            health_data(&body).as_bytes(),
            "export.xml",
            &ImportOptions::default(),
        )
        .expect("import");
        assert!(report.is_balanced(), "{report}");
        assert_eq!(
            report.skipped_count(SkipReason::CorrelationMember),
            2,
            "{report}"
        );
        assert_eq!(
            bp_values(&items),
            vec![("Systolic".into(), 131.0), ("Diastolic".into(), 84.0)],
            "each reading once (copies first: {copies_first})"
        );
    }
}

#[test]
fn a_correlation_member_is_a_duplicate_only_of_the_same_type_start_and_source() {
    let body = bp_record("Systolic", "Omron", T1, 131)
        // Another source at the same time, and the same source at another time.
        + &bp_record("Diastolic", "Withings", T1, 84)
        + &bp_record("Diastolic", "Omron", T2, 70)
        + &bp_correlation("Omron", T1, 131, 84);
    let (items, report) = import_xml_bytes(
        health_data(&body).as_bytes(),
        "export.xml",
        &ImportOptions::default(),
    )
    .expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(
        report.skipped_count(SkipReason::CorrelationMember),
        1,
        "{report}"
    );
    assert_eq!(
        bp_values(&items),
        vec![
            ("Systolic".into(), 131.0),
            ("Diastolic".into(), 84.0),
            ("Diastolic".into(), 70.0),
            ("Diastolic".into(), 84.0),
        ],
        "the Omron diastolic reading at T1 exists only in the correlation"
    );
}

#[test]
fn correlation_members_past_the_held_limit_are_presumed_duplicates() {
    let mut options = ImportOptions::default();
    options.limits.max_reference_table = 1;
    let xml = health_data(&bp_correlation("Omron", T1, 131, 84));
    let (items, report) = import_xml_bytes(xml.as_bytes(), "export.xml", &options).expect("import");
    assert!(report.is_balanced(), "{report}");
    assert_eq!(bp_values(&items), vec![("Systolic".into(), 131.0)]);
    assert_eq!(report.skipped_count(SkipReason::CorrelationMember), 1);
}

/// No control character of the source reaches an error's or a report's text.
fn assert_printable(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

#[test]
fn terminal_escapes_in_the_source_are_escaped_in_errors_and_reports() {
    let err = import_xml_bytes(
        b"<Health\x1b[31mData/>",
        "export.xml",
        &ImportOptions::default(),
    )
    .expect_err("not HealthData");
    let shown = err.to_string();
    assert_printable(&shown);
    assert!(shown.contains(r"<Health\u{1b}[31mData>"), "{shown}");

    let xml = "<HealthData>\n\
        <Record type=\"HKQuantityTypeIdentifier\u{1b}]0;x\u{7}HeartRate\" unit=\"count/min\" value=\"70\" startDate=\"2024-01-01 08:00:00 +0100\"/>\n\
        <Record type=\"HKQuantityTypeIdentifierHeartRate\" unit=\"count/min\" value=\"7\u{9b}0\" startDate=\"2024-01-01 08:00:00 +0100\"/>\n\
        <Record type=\"HKQuantityTypeIdentifierHeartRate\" unit=\"count/min\" value=\"70\" startDate=\"2024\u{202e}-01-01\"/>\n\
        <Work\u{1b}[2Jout/>\n\
        </HealthData>\n";
    let (items, report) = import_xml_bytes(
        xml.as_bytes(),
        "ex\u{1b}[1mport.xml",
        &ImportOptions::default(),
    )
    .expect("import");
    assert!(items.is_empty());
    assert_eq!(report.samples.len(), 3, "{report}");
    let shown = report.to_string();
    assert_printable(&shown);
    for escaped in [
        r"ex\u{1b}[1mport.xml",
        r#""HKQuantityTypeIdentifier\u{1b}]0;x\u{7}HeartRate""#,
        r#""7\u{9b}0""#,
        r#""2024\u{202e}-01-01""#,
        r"Work\u{1b}[2Jout: 1",
    ] {
        assert!(shown.contains(escaped), "{escaped} in {shown}");
    }
    for problem in &report.samples {
        assert_printable(&problem.to_string());
    }

    // A zip member's name is text from the file too.
    let zip = build_zip(&[(
        "apple_health_export/e\u{1b}[31mxport.xml",
        b"<HealthData>\n<Record/>",
    )]);
    let err = apple::import_zip(
        Cursor::new(zip),
        "export.zip",
        &ImportOptions::default(),
        &mut |_| Ok(()),
    )
    .expect_err("truncated");
    let shown = err.to_string();
    assert_printable(&shown);
    assert!(
        shown.starts_with(r"export.zip!/apple_health_export/e\u{1b}[31mxport.xml: "),
        "{shown}"
    );
}
