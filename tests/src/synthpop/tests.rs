//! Unit tests of the synthetic population: determinism, realism of the
//! marginal distributions, CPR validity, and the shape of the FHIR and CSV
//! output against the published Synthea samples in `testdata/data/`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

use super::csv::{CONDITIONS_HEADER, MEDICATIONS_HEADER, OBSERVATIONS_HEADER, PATIENTS_HEADER};
use super::fhir::resource_counts;
use super::*;

const STATS_DONORS: u64 = 20_000;

/// Population statistics over 20 000 donors, computed once for all tests.
struct Stats {
    n: f64,
    t2d: f64,
    hypertension: f64,
    metformin_among_t2d: f64,
    mean_bmi: f64,
    mean_bmi_t2d: f64,
    mean_bmi_other: f64,
    mean_a1c_t2d: f64,
    mean_a1c_other: f64,
    a1c_glucose_corr: f64,
    region_share: BTreeMap<u16, f64>,
    age_65_plus: f64,
    female: f64,
    t2d_by_decade: BTreeMap<i32, f64>,
    distinct_cprs: usize,
    problems: Vec<String>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn correlation(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let vx: f64 = pairs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let vy: f64 = pairs.iter().map(|p| (p.1 - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Checks the invariants of one donor; returns the violations.
fn check_donor(d: &Donor, cfg: &PopulationConfig) -> Vec<String> {
    let mut out = Vec::new();
    let who = format!("donor {}", d.index);
    if d.cpr.len() != 10 || !d.cpr.bytes().all(|b| b.is_ascii_digit()) {
        out.push(format!("{who}: CPR {:?} is not 10 digits", d.cpr));
    }
    if cpr_birth_date(&d.cpr) != Some(d.birth_date) {
        out.push(format!(
            "{who}: CPR {} does not encode birth date {}",
            d.cpr, d.birth_date
        ));
    }
    if cpr_birth_date(&d.cpr_display()) != Some(d.birth_date) {
        out.push(format!("{who}: display CPR {} invalid", d.cpr_display()));
    }
    if cpr_sex(&d.cpr) != Some(d.sex) {
        out.push(format!("{who}: CPR parity does not match sex"));
    }
    let age = d.age_on(cfg.end);
    if !(18..=95).contains(&age) {
        out.push(format!("{who}: age {age} out of 18-95"));
    }
    if d.postcode.len() != 4 || !d.postcode.bytes().all(|b| b.is_ascii_digit()) {
        out.push(format!("{who}: postcode {:?}", d.postcode));
    }
    match geo::municipality(d.municipality_code) {
        Some(m) if m.region == d.region && m.postcodes.iter().any(|p| p.0 == d.postcode) => {}
        _ => out.push(format!("{who}: municipality/postcode/region mismatch")),
    }
    if d.has_t2d != d.has_condition(ConditionKind::Type2Diabetes)
        || d.has_t2d != d.t2d_diagnosis.is_some()
    {
        out.push(format!("{who}: T2D flag, condition and date disagree"));
    }
    if d.note_observation().is_none() || !d.note.contains(&d.full_name()) {
        out.push(format!("{who}: no note observation or note without name"));
    }
    let adult = anniversary(d.birth_date, 18);
    for e in &d.encounters {
        if e.start.date() < adult || e.start.date() > cfg.end {
            out.push(format!(
                "{who}: encounter {} outside adulthood/window",
                e.start
            ));
        }
    }
    for o in &d.observations {
        let Some(enc) = d.encounters.get(o.encounter) else {
            out.push(format!("{who}: observation references missing encounter"));
            continue;
        };
        if enc.start != o.at || o.at.date() < cfg.start {
            out.push(format!("{who}: observation time {} inconsistent", o.at));
        }
    }
    // BMI consistent with weight and height at every visit.
    type HeightWeightBmi = (Option<f64>, Option<f64>, Option<f64>);
    let mut by_enc: HashMap<usize, HeightWeightBmi> = HashMap::new();
    for o in &d.observations {
        let slot = by_enc.entry(o.encounter).or_default();
        match o.measurement {
            Measurement::BodyHeight(h) => slot.0 = Some(h),
            Measurement::BodyWeight(w) => slot.1 = Some(w),
            Measurement::BodyMassIndex(b) => slot.2 = Some(b),
            _ => {}
        }
    }
    for (h, w, b) in by_enc.values() {
        if let (Some(h), Some(w), Some(b)) = (h, w, b) {
            if (w / (h / 100.0).powi(2) - b).abs() > 0.051 {
                out.push(format!("{who}: BMI {b} inconsistent with {w} kg, {h} cm"));
            }
        }
    }
    out
}

fn stats() -> &'static Stats {
    static STATS: OnceLock<Stats> = OnceLock::new();
    STATS.get_or_init(|| {
        let cfg = PopulationConfig::new(2024, STATS_DONORS);
        let mut n = 0.0;
        let (mut t2d, mut ht, mut metformin, mut old, mut female) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut bmi_all, mut bmi_t2d, mut bmi_other) = (Vec::new(), Vec::new(), Vec::new());
        let (mut a1c_t2d, mut a1c_other) = (Vec::new(), Vec::new());
        let mut pairs = Vec::new();
        let mut regions: BTreeMap<u16, f64> = BTreeMap::new();
        let mut decades: BTreeMap<i32, (f64, f64)> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut cprs = HashSet::new();
        for d in donors(&cfg) {
            n += 1.0;
            cprs.insert(d.cpr.clone());
            problems.extend(check_donor(&d, &cfg));
            let age = d.age_on(cfg.end);
            *regions.entry(d.region.code()).or_default() += 1.0;
            let dec = decades.entry(age / 10 * 10).or_default();
            dec.0 += 1.0;
            if age >= 65 {
                old += 1.0;
            }
            if d.sex == Sex::Female {
                female += 1.0;
            }
            bmi_all.push(d.bmi);
            if d.has_hypertension {
                ht += 1.0;
            }
            let a1c = d.values(clinical::HBA1C.code);
            if d.has_t2d {
                t2d += 1.0;
                dec.1 += 1.0;
                bmi_t2d.push(d.bmi);
                a1c_t2d.extend(&a1c);
                if d.medications
                    .iter()
                    .any(|m| m.kind == MedicationKind::Metformin)
                {
                    metformin += 1.0;
                }
            } else {
                bmi_other.push(d.bmi);
                a1c_other.extend(&a1c);
            }
            let glucose = d.values(clinical::GLUCOSE.code);
            pairs.extend(a1c.iter().copied().zip(glucose));
        }
        Stats {
            n,
            t2d: t2d / n,
            hypertension: ht / n,
            metformin_among_t2d: metformin / t2d,
            mean_bmi: mean(&bmi_all),
            mean_bmi_t2d: mean(&bmi_t2d),
            mean_bmi_other: mean(&bmi_other),
            mean_a1c_t2d: mean(&a1c_t2d),
            mean_a1c_other: mean(&a1c_other),
            a1c_glucose_corr: correlation(&pairs),
            region_share: regions.into_iter().map(|(k, v)| (k, v / n)).collect(),
            age_65_plus: old / n,
            female: female / n,
            t2d_by_decade: decades.into_iter().map(|(k, (a, b))| (k, b / a)).collect(),
            distinct_cprs: cprs.len(),
            problems,
        }
    })
}

#[test]
fn every_donor_is_internally_consistent() {
    let s = stats();
    assert_eq!(s.n as u64, STATS_DONORS);
    assert!(
        s.problems.is_empty(),
        "{} problems, first: {:?}",
        s.problems.len(),
        &s.problems[..s.problems.len().min(10)]
    );
}

#[test]
fn cpr_numbers_are_unique_in_a_population() {
    assert_eq!(stats().distinct_cprs as u64, STATS_DONORS);
    // The demo's default seed draws one number twice among its first 20 000.
    let demo = PopulationConfig::new(42, 20_000);
    let drawn: HashSet<String> = (0..20_000).map(|i| donor(&demo, i).cpr).collect();
    assert_eq!(drawn.len(), 19_999);
    let issued: HashSet<String> = donors(&demo).map(|d| d.cpr).collect();
    assert_eq!(issued.len(), 20_000);
    // Fifty donors drawing the same number: the first keeps it, the others get
    // the next free serials of the same birth date and sex.
    let cfg = PopulationConfig::new(7, 1);
    let original = donor(&cfg, 0);
    let mut register = CprRegister::default();
    let mut seen = HashSet::new();
    for i in 0..50 {
        let mut d = original.clone();
        assert_eq!(register.issue(&mut d), i > 0);
        assert!(seen.insert(d.cpr.clone()), "{} issued twice", d.cpr);
        assert_eq!(cpr_birth_date(&d.cpr), Some(d.birth_date));
        assert_eq!(cpr_sex(&d.cpr), Some(d.sex));
        assert_eq!(d.cpr[..6], original.cpr[..6]);
        assert!(d.note.contains(&d.cpr_display()), "{}", d.note);
    }
}

#[test]
fn t2d_prevalence_is_danish() {
    let s = stats();
    assert!((0.05..=0.08).contains(&s.t2d), "T2D prevalence {}", s.t2d);
    // Rising steeply with age.
    let young = s.t2d_by_decade[&20];
    let sixties = s.t2d_by_decade[&60];
    let seventies = s.t2d_by_decade[&70];
    assert!(young < 0.01, "T2D in twenties {young}");
    assert!(
        sixties > 0.07 && seventies > sixties * 1.1,
        "{:?}",
        s.t2d_by_decade
    );
    assert!(
        s.metformin_among_t2d > 0.75,
        "metformin {}",
        s.metformin_among_t2d
    );
    assert!(
        (0.15..=0.40).contains(&s.hypertension),
        "hypertension {}",
        s.hypertension
    );
}

#[test]
fn bmi_is_plausible_and_higher_in_t2d() {
    let s = stats();
    assert!(
        (24.5..=27.5).contains(&s.mean_bmi),
        "mean BMI {}",
        s.mean_bmi
    );
    assert!(
        s.mean_bmi_t2d > s.mean_bmi_other + 2.0,
        "BMI T2D {} vs {}",
        s.mean_bmi_t2d,
        s.mean_bmi_other
    );
}

#[test]
fn hba1c_separates_diabetics_and_tracks_glucose() {
    let s = stats();
    assert!(
        s.mean_a1c_t2d > s.mean_a1c_other + 1.0,
        "HbA1c T2D {} vs {}",
        s.mean_a1c_t2d,
        s.mean_a1c_other
    );
    assert!(
        (5.0..=5.8).contains(&s.mean_a1c_other),
        "{}",
        s.mean_a1c_other
    );
    assert!((6.5..=9.0).contains(&s.mean_a1c_t2d), "{}", s.mean_a1c_t2d);
    assert!(s.a1c_glucose_corr > 0.7, "corr {}", s.a1c_glucose_corr);
    assert!((hba1c_percent_to_mmol_mol(6.5) - 48.0).abs() < 0.5);
}

#[test]
fn regions_age_and_sex_follow_denmark() {
    let s = stats();
    for r in Region::ALL {
        let share = s.region_share.get(&r.code()).copied().unwrap_or(0.0);
        assert!(
            (share - r.population_share()).abs() < 0.015,
            "{} share {share}",
            r.name()
        );
    }
    assert!(
        (0.22..=0.29).contains(&s.age_65_plus),
        "65+ {}",
        s.age_65_plus
    );
    assert!((0.49..=0.53).contains(&s.female), "female {}", s.female);
}

#[test]
fn geography_tables_are_sound() {
    let total: f64 = Region::ALL.iter().map(|r| r.population_share()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let mut codes = HashSet::new();
    for m in geo::MUNICIPALITIES {
        assert!(codes.insert(m.code), "duplicate municipality {}", m.code);
        assert!(!m.postcodes.is_empty());
        for (pc, city) in m.postcodes {
            assert!(
                pc.len() == 4 && pc.bytes().all(|b| b.is_ascii_digit()),
                "{pc}"
            );
            assert!(!city.is_empty());
        }
    }
    for r in Region::ALL {
        assert!(r.municipalities().count() >= 4, "{}", r.name());
        assert_eq!(Region::from_code(r.code()), Some(r));
    }
    // The donor client generalises a postcode with the protocol's table: every postcode the
    // generator gives a donor lands in that donor's region there.
    let mut mismatched = Vec::new();
    for m in geo::MUNICIPALITIES {
        for (pc, _) in m.postcodes {
            let region = datadonor_schemas::geo::region_of_postcode(pc);
            if region != Some(m.region) {
                mismatched.push(format!("{pc} ({}): {region:?}", m.name));
            }
        }
    }
    assert!(mismatched.is_empty(), "{mismatched:?}");
    for (code, name) in [
        (101, "København"),
        (461, "Odense"),
        (751, "Aarhus"),
        (851, "Aalborg"),
    ] {
        assert_eq!(geo::municipality(code).map(|m| m.name), Some(name));
    }
}

#[test]
fn cpr_decoding_follows_the_century_rule() {
    let d = |y, m, day| Date::new(y, m, day).ok();
    assert_eq!(cpr_birth_date("0101370123"), d(1937, 1, 1));
    assert_eq!(cpr_birth_date("010137-4123"), d(1937, 1, 1));
    assert_eq!(cpr_birth_date("0101364123"), d(2036, 1, 1));
    assert_eq!(cpr_birth_date("0101585123"), d(1858, 1, 1));
    assert_eq!(cpr_birth_date("0101575123"), d(2057, 1, 1));
    assert_eq!(cpr_birth_date("2902011234"), None, "1901 is no leap year");
    assert_eq!(cpr_birth_date("3213801234"), None);
    assert_eq!(cpr_birth_date("01018012x4"), None);
    assert_eq!(cpr_sex("0101801233"), Some(Sex::Male));
    assert_eq!(cpr_sex("0101801234"), Some(Sex::Female));
}

fn fhir_bytes(d: &Donor) -> Vec<u8> {
    let mut out = Vec::new();
    write_fhir_bundle(d, &mut out).expect("write to Vec");
    out
}

#[test]
fn same_seed_gives_identical_bytes() {
    let cfg = PopulationConfig::new(7, 40);
    let a: Vec<Vec<u8>> = donors(&cfg).map(|d| fhir_bytes(&d)).collect();
    let b: Vec<Vec<u8>> = donors(&cfg).map(|d| fhir_bytes(&d)).collect();
    assert_eq!(a, b);

    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    write_synthea_csv(donors(&cfg), dir_a.path()).expect("csv a");
    write_synthea_csv(donors(&cfg), dir_b.path()).expect("csv b");
    for f in [
        "patients.csv",
        "observations.csv",
        "conditions.csv",
        "medications.csv",
    ] {
        let x = std::fs::read(dir_a.path().join(f)).expect("read a");
        let y = std::fs::read(dir_b.path().join(f)).expect("read b");
        assert_eq!(x, y, "{f} differs");
    }

    let mut nd_a = Vec::new();
    let mut nd_b = Vec::new();
    write_ndjson(donors(&cfg), &mut nd_a).expect("ndjson");
    write_ndjson(donors(&cfg), &mut nd_b).expect("ndjson");
    assert_eq!(nd_a, nd_b);
    let resources: usize = donors(&cfg)
        .map(|d| resource_counts(&d).values().sum::<usize>())
        .sum();
    let lines: Vec<Value> = nd_a
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("NDJSON line parses"))
        .collect();
    assert_eq!(lines.len(), resources);
    assert_eq!(
        lines
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            .count(),
        40
    );

    let other: Vec<Vec<u8>> = donors(&PopulationConfig::new(8, 40))
        .map(|d| fhir_bytes(&d))
        .collect();
    assert_ne!(a, other, "a different seed gives a different population");
}

#[test]
fn donor_is_independent_of_population_size_and_order() {
    let small = PopulationConfig::new(99, 5);
    let large = PopulationConfig::new(99, 1_000_000);
    let from_small: Vec<Donor> = donors(&small).collect();
    for (i, d) in from_small.iter().enumerate() {
        assert_eq!(d, &donor(&large, i as u64));
        assert_eq!(d.index, i as u64);
    }
    assert_eq!(donors(&large).nth(3).as_ref(), from_small.get(3));
    // Far-away donors are generated directly, without the ones before.
    let far = donor(&large, 999_999);
    assert_eq!(far, donor(&large, 999_999));
    assert_ne!(far.id, from_small[0].id);
}

#[test]
fn config_validation_and_clamping() {
    assert!(PopulationConfig::default().validate().is_ok());
    let mut bad = PopulationConfig {
        visits_per_donor: (0, 3),
        ..PopulationConfig::default()
    };
    assert!(bad.validate().is_err());
    bad.visits_per_donor = (5, 3);
    assert!(bad.validate().is_err());
    bad.visits_per_donor = (2, 3);
    bad.start = jiff::civil::date(2030, 1, 1);
    assert!(bad.validate().is_err());
    // Still generates something sensible.
    let d = donor(&bad, 0);
    assert!(!d.encounters.is_empty());
    assert!(check_donor(&d, &bad.normalized()).is_empty());
}

/// `rel` under the repository's `testdata/` (sources in `testdata/SOURCES.md`); a missing file
/// or directory fails the test with its path.
fn testdata(rel: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel);
    assert!(path.exists(), "test data missing: {}", path.display());
    path
}

fn first_line(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()));
    text.lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_string()
}

#[test]
fn csv_headers_equal_the_synthea_samples() {
    let samples = testdata("data/synthea_csv");
    let cfg = PopulationConfig::new(3, 25);
    let dir = tempfile::tempdir().expect("tempdir");
    let written = write_synthea_csv(donors(&cfg), dir.path()).expect("csv");
    assert_eq!(written, 25);
    let expected: [(&str, &[&str]); 4] = [
        ("patients.csv", &PATIENTS_HEADER),
        ("observations.csv", &OBSERVATIONS_HEADER),
        ("conditions.csv", &CONDITIONS_HEADER),
        ("medications.csv", &MEDICATIONS_HEADER),
    ];
    for (file, header) in expected {
        let sample = first_line(&samples.join(file));
        assert_eq!(
            sample,
            header.join(","),
            "{file}: constant differs from sample"
        );
        assert_eq!(
            first_line(&dir.path().join(file)),
            sample,
            "{file}: written header"
        );
    }

    // Row counts and field counts.
    let all: Vec<Donor> = donors(&cfg).collect();
    let rows = |file: &str| -> Vec<::csv::StringRecord> {
        ::csv::Reader::from_path(dir.path().join(file))
            .expect("open")
            .records()
            .collect::<Result<_, _>>()
            .expect("parse")
    };
    let patients = rows("patients.csv");
    assert_eq!(patients.len(), all.len());
    for (rec, d) in patients.iter().zip(&all) {
        assert_eq!(rec.len(), PATIENTS_HEADER.len());
        assert_eq!(&rec[0], d.id);
        assert_eq!(&rec[3], d.cpr_display(), "SSN carries the CPR");
        assert_eq!(&rec[7], d.given_name);
        assert_eq!(&rec[20], d.postcode);
    }
    let obs_rows: usize = all
        .iter()
        .flat_map(|d| &d.observations)
        .map(|o| o.measurement.parts().count())
        .sum();
    assert_eq!(rows("observations.csv").len(), obs_rows);
    let cond_rows: usize = all.iter().map(|d| d.conditions.len()).sum();
    assert_eq!(rows("conditions.csv").len(), cond_rows);
    let med_rows: usize = all.iter().map(|d| d.medications.len()).sum();
    assert_eq!(rows("medications.csv").len(), med_rows);
    assert!(rows("medications.csv")
        .iter()
        .all(|r| r.len() == MEDICATIONS_HEADER.len()));
}

#[test]
fn fhir_bundles_are_well_formed() {
    let cfg = PopulationConfig::new(11, 150);
    let mut saw_t2d = false;
    for d in donors(&cfg) {
        let bytes = fhir_bytes(&d);
        let v: Value = serde_json::from_slice(&bytes).expect("bundle parses as JSON");
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "transaction");
        let entries = v["entry"].as_array().expect("entry array");

        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut full_urls = HashSet::new();
        for e in entries {
            let rt = e["resource"]["resourceType"]
                .as_str()
                .expect("resourceType");
            *counts.entry(rt).or_default() += 1;
            assert_eq!(e["request"]["method"], "POST");
            assert_eq!(e["request"]["url"], rt);
            let url = e["fullUrl"].as_str().expect("fullUrl");
            assert_eq!(
                url,
                format!("urn:uuid:{}", e["resource"]["id"].as_str().expect("id"))
            );
            assert!(full_urls.insert(url.to_string()), "duplicate fullUrl");
        }
        assert_eq!(counts, resource_counts(&d));

        // Every urn:uuid reference resolves inside the bundle.
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("reference", Value::String(s)) => out.push(s),
                            _ => refs(x, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all_refs = Vec::new();
        refs(&v, &mut all_refs);
        for r in all_refs {
            assert!(full_urls.contains(r), "dangling reference {r}");
        }

        // Identifying data is present (the client must strip it).
        let patient = &entries[0]["resource"];
        assert_eq!(patient["resourceType"], "Patient");
        let cpr = patient["identifier"]
            .as_array()
            .expect("identifiers")
            .iter()
            .find(|i| i["system"] == CPR_SYSTEM)
            .expect("CPR identifier");
        assert_eq!(cpr["value"], d.cpr.as_str());
        assert_eq!(patient["name"][0]["family"], d.family_name.as_str());
        assert_eq!(patient["birthDate"], fhir::fmt_date(d.birth_date));
        assert_eq!(patient["address"][0]["postalCode"], d.postcode.as_str());
        assert_eq!(patient["address"][0]["country"], "DK");
        assert_eq!(patient["address"][0]["line"][0], d.address_line.as_str());
        let div = patient["text"]["div"].as_str().expect("div");
        assert!(div.contains(&d.full_name()) && div.contains(&d.cpr_display()));

        // The note, the BP panel and the quantities.
        let observations: Vec<&Value> = entries
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "Observation")
            .collect();
        let noted: Vec<&&Value> = observations
            .iter()
            .filter(|o| o.get("note").is_some())
            .collect();
        assert_eq!(noted.len(), 1);
        let note = noted[0]["note"][0]["text"].as_str().expect("note text");
        assert!(note.contains(&d.full_name()));
        assert_eq!(noted[0]["code"]["coding"][0]["code"], "4548-4");
        assert_eq!(noted[0]["valueQuantity"]["unit"], "%");
        for o in &observations {
            let code = o["code"]["coding"][0]["code"].as_str().expect("code");
            if code == "85354-9" {
                let comps = o["component"].as_array().expect("components");
                let codes: HashSet<&str> = comps
                    .iter()
                    .filter_map(|c| c["code"]["coding"][0]["code"].as_str())
                    .collect();
                assert_eq!(codes, HashSet::from(["8480-6", "8462-4"]));
                assert!(comps.iter().all(|c| c["valueQuantity"]["code"] == "mm[Hg]"));
            } else {
                assert!(o["valueQuantity"]["value"].is_f64(), "{code} has a value");
                assert_eq!(o["valueQuantity"]["system"], "http://unitsofmeasure.org");
            }
        }
        if d.has_t2d {
            saw_t2d = true;
            let has = |rt: &str, code: &str| {
                entries.iter().any(|e| {
                    let r = &e["resource"];
                    r["resourceType"] == rt
                        && (r["code"]["coding"][0]["code"] == code
                            || r["medicationCodeableConcept"]["coding"][0]["code"] == code)
                })
            };
            assert!(has("Condition", "44054006"));
            let on_metformin = d
                .medications
                .iter()
                .any(|m| m.kind == MedicationKind::Metformin);
            assert_eq!(has("MedicationRequest", "860975"), on_metformin);
        }
    }
    assert!(saw_t2d, "150 donors include a diabetic");
}

/// The donor client's importers read every format unchanged: nothing skipped
/// but the Encounters (which carry no donated data), and one item per
/// observation component, condition and prescription of the ground truth.
#[test]
fn client_importers_read_the_output() {
    use datadonor_client::import::{import_path, ImportReport};
    let import = |path: &std::path::Path| -> ImportReport {
        import_path(path, &mut |_item| Ok(())).expect("import succeeds")
    };
    let cfg = PopulationConfig::new(5, 30);
    let all: Vec<Donor> = donors(&cfg).collect();
    let parts = |d: &Donor| -> u64 {
        d.observations
            .iter()
            .map(|o| o.measurement.parts().count() as u64)
            .sum()
    };
    let dir = tempfile::tempdir().expect("tempdir");

    // Synthea CSV.
    write_synthea_csv(all.iter().cloned(), &dir.path().join("csv")).expect("csv");
    let rep = import(&dir.path().join("csv"));
    assert!(rep.skipped.is_empty() && rep.samples.is_empty(), "{rep:#?}");
    assert_eq!(rep.emitted.demographics, all.len() as u64);
    assert_eq!(rep.emitted.observations, all.iter().map(parts).sum::<u64>());
    assert_eq!(
        rep.emitted.conditions,
        all.iter().map(|d| d.conditions.len() as u64).sum::<u64>()
    );
    assert_eq!(
        rep.emitted.medications,
        all.iter().map(|d| d.medications.len() as u64).sum::<u64>()
    );

    // FHIR Bundles and NDJSON.
    let check = |rep: &ImportReport, ds: &[Donor]| {
        assert!(rep.samples.is_empty(), "{rep:#?}");
        let encounters: u64 = ds.iter().map(|d| d.encounters.len() as u64).sum();
        assert_eq!(rep.skipped.values().sum::<u64>(), encounters, "{rep:#?}");
        assert_eq!(rep.emitted.demographics, ds.len() as u64);
        assert_eq!(rep.emitted.observations, ds.iter().map(parts).sum::<u64>());
        let conditions: u64 = ds.iter().map(|d| d.conditions.len() as u64).sum();
        let medications: u64 = ds.iter().map(|d| d.medications.len() as u64).sum();
        assert_eq!(rep.emitted.conditions, conditions);
        assert_eq!(rep.emitted.medications, medications);
    };
    for d in all.iter().take(10) {
        let path = dir.path().join(format!("{}.json", d.id));
        let file = std::fs::File::create(&path).expect("create");
        write_fhir_bundle(d, std::io::BufWriter::new(file)).expect("bundle");
        check(&import(&path), std::slice::from_ref(d));
    }
    let path = dir.path().join("fhir.ndjson");
    let file = std::fs::File::create(&path).expect("create");
    write_ndjson(all.iter().cloned(), std::io::BufWriter::new(file)).expect("ndjson");
    check(&import(&path), &all);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn any_donor_has_a_valid_cpr(seed in proptest::prelude::any::<u64>(), index in 0u64..u64::MAX) {
        let cfg = PopulationConfig::new(seed, 1);
        let d = donor(&cfg, index);
        proptest::prop_assert_eq!(cpr_birth_date(&d.cpr), Some(d.birth_date));
        proptest::prop_assert_eq!(cpr_sex(&d.cpr), Some(d.sex));
        let problems = check_donor(&d, &cfg);
        proptest::prop_assert!(problems.is_empty(), "{:?}", problems);
    }
}
