//! Minimisation rules, one test per rule: unit conversion, ranges, means, month periods, age band
//! at the observation date, minimum age, region, condition flags, and the count per drop reason.

use std::sync::Arc;

use datadonor_client::import::{
    Code, CodeSystem, Demographics, RecordLocation, RecordRef, Sex, SourceCondition, SourceItem,
    SourceMedication, SourceObservation, SourceValue,
};
use datadonor_client::minimise::{
    age_at, Cell, DropReason, MinimiseError, MinimiseOptions, MinimisedRows, Minimiser,
};
use datadonor_schemas::pseudonym::{Cpr, Pseudonym};
use datadonor_schemas::study::StudyDefinition;
use jiff::civil::{date, Date};

const STUDY: &str = r#"
format = 1
id = "test-study"
version = 1
title = "Test"
period = "month"
min_k = 5
retention_days = 10
max_consent_days = 30
notice_sha256 = "5d9b2d8358a46e0ab623d76a2e050fae3d50cd951e09cce7c5ecfd12db633ebb"
[controller]
name = "C"
contact = "c@example.org"
[[purposes]]
code = "p1"
text = "P1"
[[fields]]
name = "age_band"
role = "dimension"
description = "age"
source = { kind = "age_band", years = 10, min_age = 18, top_age = 90 }
[[fields]]
name = "sex"
role = "dimension"
description = "sex"
source = { kind = "sex" }
[[fields]]
name = "region"
role = "dimension"
description = "region"
source = { kind = "residence", level = "region" }
[[fields]]
name = "t2d"
role = "dimension"
description = "t2d"
source = { kind = "condition", codes = [{ system = "snomed", code = "44054006" }] }
[[fields]]
name = "hba1c"
role = "measure"
description = "hba1c"
[fields.source]
kind = "observation"
codes = [{ system = "loinc", code = "4548-4" }]
unit = "%"
min = 3.0
max = 20.0
convert = [{ from = "mmol/mol", factor = 0.09148, offset = 2.152 }]
[[fields]]
name = "glucose"
role = "measure"
description = "glucose"
[fields.source]
kind = "observation"
codes = [{ system = "loinc", code = "2339-0" }, { system = "apple", code = "HKQuantityTypeIdentifierBloodGlucose" }]
unit = "mmol/L"
min = 1.0
max = 40.0
convert = [{ from = "mg/dL", factor = 0.0555 }]
"#;

fn study() -> StudyDefinition {
    StudyDefinition::from_toml(STUDY).expect("study")
}

fn loc() -> RecordLocation {
    RecordLocation {
        file: Arc::from("test.json"),
        record: RecordRef::Line(1),
    }
}

fn demo(birth: Option<Date>, postcode: &str) -> SourceItem {
    SourceItem::Demographics(Demographics {
        patient: Some("p1".into()),
        birth_date: birth,
        sex: Some(Sex::Female),
        postcode: Some(postcode.into()),
        primary_national_id: Some("999-17-5017".into()),
        cpr: None,
        national_ids: vec!["999-17-5017".into(), "MRN-1".into()],
        names: vec!["Anna".into(), "Hansen".into()],
        addresses: vec!["Vestergade 1".into()],
        location: Some(loc()),
    })
}

fn obs(code: &str, value: f64, unit: &str, d: Date) -> SourceItem {
    SourceItem::Observation(SourceObservation {
        patient: Some("p1".into()),
        code: Code {
            system: CodeSystem::Loinc,
            code: code.into(),
        },
        value: SourceValue::Quantity {
            value,
            unit: unit.into(),
        },
        effective: Some(d.at(10, 0, 0, 0)),
        location: loc(),
    })
}

fn run(items: Vec<SourceItem>, options: MinimiseOptions) -> MinimisedRows {
    let mut m = Minimiser::new(&study(), options);
    for i in items {
        m.push(i).expect("push");
    }
    m.finish()
}

fn cell<'a>(rows: &'a MinimisedRows, period: &str, field: usize) -> &'a Cell {
    &rows
        .rows
        .iter()
        .find(|r| r.period == period)
        .unwrap_or_else(|| panic!("no row {period}"))
        .cells[field]
}

const AGE: usize = 0;
const SEX: usize = 1;
const REGION: usize = 2;
const T2D: usize = 3;
const HBA1C: usize = 4;
const GLUCOSE: usize = 5;

#[test]
fn units_are_converted_exactly_after_trimming_and_unknown_units_counted() {
    let r = run(
        vec![
            demo(Some(date(1970, 1, 1)), "5000"),
            obs("4548-4", 53.0, " mmol/mol ", date(2020, 1, 10)),
            obs("2339-0", 180.0, "mg/dL", date(2020, 2, 10)),
            obs("2339-0", 5.0, "mmol/l", date(2020, 2, 11)), // case differs: unknown
            obs("4548-4", 7.0, "percent", date(2020, 2, 12)),
        ],
        MinimiseOptions::default(),
    );
    assert_eq!(cell(&r, "2020-01", HBA1C), &Cell::Number(Some(7.00044)));
    assert_eq!(cell(&r, "2020-02", GLUCOSE), &Cell::Number(Some(9.99)));
    assert_eq!(cell(&r, "2020-02", HBA1C), &Cell::Number(None));
    assert_eq!(r.report.count(DropReason::UnknownUnit), 2);
    assert_eq!(r.report.observations_used, 2);
}

#[test]
fn values_outside_the_range_are_dropped_and_counted_never_clamped() {
    let r = run(
        vec![
            demo(Some(date(1970, 1, 1)), "5000"),
            obs("4548-4", 25.0, "%", date(2020, 1, 10)),
            obs("4548-4", 2.9, "%", date(2020, 1, 11)),
            obs("4548-4", f64::NAN, "%", date(2020, 1, 12)),
            obs("2339-0", 5.5, "mmol/L", date(2020, 1, 12)),
        ],
        MinimiseOptions::default(),
    );
    assert_eq!(r.report.count(DropReason::OutOfRange), 3);
    assert_eq!(cell(&r, "2020-01", HBA1C), &Cell::Number(None));
    assert_eq!(cell(&r, "2020-01", GLUCOSE), &Cell::Number(Some(5.5)));
}

#[test]
fn several_values_in_a_period_give_their_mean_and_months_split_rows() {
    let r = run(
        vec![
            demo(Some(date(1970, 1, 1)), "5000"),
            obs("4548-4", 6.0, "%", date(2020, 1, 1)),
            obs("4548-4", 7.0, "%", date(2020, 1, 31)),
            obs("4548-4", 9.0, "%", date(2020, 2, 1)),
        ],
        MinimiseOptions::default(),
    );
    let periods: Vec<&str> = r.rows.iter().map(|r| r.period.as_str()).collect();
    assert_eq!(periods, ["2020-01", "2020-02"]);
    assert_eq!(cell(&r, "2020-01", HBA1C), &Cell::Number(Some(6.5)));
    assert_eq!(cell(&r, "2020-02", HBA1C), &Cell::Number(Some(9.0)));
}

#[test]
fn age_band_is_taken_at_the_observation_date() {
    assert_eq!(age_at(date(1990, 6, 15), date(2020, 6, 14)), Some(29));
    assert_eq!(age_at(date(1990, 6, 15), date(2020, 6, 15)), Some(30));
    assert_eq!(age_at(date(1990, 6, 15), date(1990, 6, 14)), None);
    let r = run(
        vec![
            demo(Some(date(1990, 6, 15)), "5000"),
            obs("4548-4", 6.0, "%", date(2020, 5, 20)),
            obs("4548-4", 6.0, "%", date(2020, 7, 1)),
            obs("4548-4", 6.0, "%", date(2050, 7, 1)),
        ],
        MinimiseOptions::default(),
    );
    assert_eq!(cell(&r, "2020-05", AGE), &Cell::Category("20-29".into()));
    assert_eq!(cell(&r, "2020-07", AGE), &Cell::Category("30-39".into()));
    assert_eq!(cell(&r, "2050-07", AGE), &Cell::Category("60-69".into()));
    assert_eq!(cell(&r, "2020-05", SEX), &Cell::Category("female".into()));
}

#[test]
fn rows_under_the_minimum_age_are_dropped_even_when_the_birthday_is_mid_period() {
    let r = run(
        vec![
            demo(Some(date(2005, 3, 10)), "5000"),
            obs("4548-4", 6.0, "%", date(2023, 2, 9)), // 17
            obs("4548-4", 6.0, "%", date(2023, 3, 9)), // 17, same month as an 18-year-old value
            obs("4548-4", 6.0, "%", date(2023, 3, 20)), // 18
            obs("4548-4", 6.0, "%", date(2023, 4, 1)), // 18
        ],
        MinimiseOptions::default(),
    );
    let periods: Vec<&str> = r.rows.iter().map(|r| r.period.as_str()).collect();
    assert_eq!(periods, ["2023-04"]);
    assert_eq!(cell(&r, "2023-04", AGE), &Cell::Category("18-19".into()));
    assert_eq!(r.report.count(DropReason::RowUnderMinAge), 2);
}

#[test]
fn the_cprs_birth_date_is_used_only_when_the_export_has_none() {
    let items = || {
        vec![
            demo(None, "5000"),
            obs("4548-4", 6.0, "%", date(2020, 1, 10)),
        ]
    };
    let none = run(items(), MinimiseOptions::default());
    assert!(none.rows.is_empty());
    assert_eq!(none.report.count(DropReason::RowNoBirthDate), 1);
    let cpr = Cpr::parse("010170-1234").expect("cpr");
    let with = run(items(), MinimiseOptions::default().with_cpr(&cpr));
    assert_eq!(cell(&with, "2020-01", AGE), &Cell::Category("50-59".into()));
}

#[test]
fn region_comes_from_the_postcode_and_unknown_postcodes_drop_rows() {
    let items = |pc: &str| {
        vec![
            demo(Some(date(1970, 1, 1)), pc),
            obs("4548-4", 6.0, "%", date(2020, 1, 10)),
        ]
    };
    let r = run(items("5000"), MinimiseOptions::default());
    assert_eq!(
        cell(&r, "2020-01", REGION),
        &Cell::Category("syddanmark".into())
    );
    let us = run(items("02155"), MinimiseOptions::default());
    assert!(us.rows.is_empty());
    assert_eq!(us.report.count(DropReason::RowUnknownPostcode), 1);
    let stated = run(
        items("02155"),
        MinimiseOptions::default().with_postcode("8000"),
    );
    assert_eq!(
        cell(&stated, "2020-01", REGION),
        &Cell::Category("midtjylland".into())
    );
}

#[test]
fn condition_flags_need_an_onset_on_or_before_the_periods_last_observation() {
    let cond = |d: Option<Date>, code: &str| {
        SourceItem::Condition(SourceCondition {
            patient: Some("p1".into()),
            code: Code {
                system: CodeSystem::Snomed,
                code: code.into(),
            },
            onset: d,
            location: loc(),
        })
    };
    let r = run(
        vec![
            demo(Some(date(1970, 1, 1)), "5000"),
            obs("4548-4", 6.0, "%", date(2020, 2, 10)),
            obs("4548-4", 6.0, "%", date(2020, 3, 20)),
            obs("4548-4", 6.0, "%", date(2020, 3, 10)),
            cond(Some(date(2020, 3, 15)), "44054006"),
            cond(Some(date(2021, 1, 1)), "44054006"),
            cond(None, "44054006"),
            cond(Some(date(2019, 1, 1)), "38341003"),
        ],
        MinimiseOptions::default(),
    );
    assert_eq!(cell(&r, "2020-02", T2D), &Cell::Flag(false));
    assert_eq!(cell(&r, "2020-03", T2D), &Cell::Flag(true));
    assert_eq!(r.report.count(DropReason::ConditionWithoutOnset), 1);
    assert_eq!(r.report.count(DropReason::ConditionNotRequested), 1);
    assert_eq!(r.report.conditions_used, 2);
}

#[test]
fn everything_dropped_is_counted_by_reason() {
    let mut free_text = obs("72166-2", 0.0, "", date(2020, 1, 1));
    if let SourceItem::Observation(o) = &mut free_text {
        o.value = SourceValue::Text("Lives with her daughter at Vestergade 1".into());
    }
    let mut undated = obs("4548-4", 6.0, "%", date(2020, 1, 1));
    if let SourceItem::Observation(o) = &mut undated {
        o.effective = None;
    }
    let mut other_patient = obs("4548-4", 6.0, "%", date(2020, 1, 1));
    if let SourceItem::Observation(o) = &mut other_patient {
        o.patient = Some("p2".into());
    }
    let med = SourceItem::Medication(SourceMedication {
        patient: Some("p1".into()),
        code: Code {
            system: CodeSystem::RxNorm,
            code: "860975".into(),
        },
        authored: Some(date(2020, 1, 1)),
        location: loc(),
    });
    let r = run(
        vec![
            demo(Some(date(1970, 1, 1)), "5000"),
            free_text,
            undated,
            other_patient,
            med,
            obs("8867-4", 70.0, "/min", date(2020, 1, 1)),
            obs("4548-4", 6.0, "%", date(2020, 1, 1)),
        ],
        MinimiseOptions::default().with_patient("p1"),
    );
    let d = &r.report;
    assert_eq!(d.count(DropReason::Name), 2);
    assert_eq!(d.count(DropReason::Address), 1);
    assert_eq!(d.count(DropReason::Identifier), 2);
    assert_eq!(d.count(DropReason::ExactBirthDate), 1);
    assert_eq!(d.count(DropReason::ExactPostcode), 1);
    assert_eq!(d.count(DropReason::FreeText), 1);
    assert_eq!(d.count(DropReason::NoDate), 1);
    assert_eq!(d.count(DropReason::OtherPatient), 1);
    assert_eq!(d.count(DropReason::Medication), 1);
    assert_eq!(d.count(DropReason::ObservationNotRequested), 1);
    assert_eq!(d.observations_used, 1);
    assert_eq!(d.rows, 1);
    // Nothing identifying is even held in the output structures.
    let dump = format!("{r:?}");
    for needle in [
        "Anna",
        "Hansen",
        "Vestergade",
        "999-17-5017",
        "MRN-1",
        "daughter",
    ] {
        assert!(!dump.contains(needle), "{needle} in {dump}");
    }
}

#[test]
fn a_second_patient_without_a_selection_is_an_error() {
    let mut m = Minimiser::new(&study(), MinimiseOptions::default());
    m.push(obs("4548-4", 6.0, "%", date(2020, 1, 1)))
        .expect("first");
    let mut second = obs("4548-4", 6.0, "%", date(2020, 1, 1));
    if let SourceItem::Observation(o) = &mut second {
        o.patient = Some("p2".into());
    }
    m.push(second).expect("counted, then refused at the end");
    let mut third = obs("4548-4", 6.0, "%", date(2020, 1, 1));
    if let SourceItem::Observation(o) = &mut third {
        o.patient = Some("p\u{1b}[31m3".into());
    }
    m.push(third).expect("third");
    let err = m.finish_checked().expect_err("several patients");
    let MinimiseError::SeveralPatients { patients, more, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(patients.len(), 3, "{patients:?}");
    assert_eq!(*more, 0);
    let shown = err.to_string();
    assert!(shown.contains(r#""p\u{1b}[31m3""#), "{shown}");
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}

#[test]
fn a_selected_patient_missing_from_the_export_is_an_error_listing_those_found() {
    let mut m = Minimiser::new(&study(), MinimiseOptions::default().with_patient("nobody"));
    for i in 0..25 {
        let mut item = obs("4548-4", 6.0, "%", date(2020, 1, 1));
        if let SourceItem::Observation(o) = &mut item {
            o.patient = Some(format!("p{i}"));
        }
        m.push(item).expect("push");
    }
    let err = m.finish_checked().expect_err("not found");
    assert!(
        matches!(err, MinimiseError::PatientNotFound { more: 5, .. }),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(r#"--patient "nobody": no record of this patient in the export (patients found: "p0", "p1", "#),
        "{shown}"
    );
    assert!(shown.ends_with(r#""p19" and 5 more)"#), "{shown}");
}

#[test]
fn the_record_batch_matches_the_study_schema() {
    let r = run(
        vec![
            demo(Some(date(1970, 1, 1)), "5000"),
            obs("4548-4", 6.0, "%", date(2020, 1, 10)),
            obs("2339-0", 6.0, "mmol/L", date(2020, 2, 10)),
        ],
        MinimiseOptions::default(),
    );
    let p = Pseudonym([7u8; 32]);
    let batch = r.to_record_batch(&p).expect("batch");
    assert_eq!(batch.num_rows(), 2);
    study()
        .validate_rows(&batch, Some(&p.to_hex()))
        .expect("valid rows");
}
