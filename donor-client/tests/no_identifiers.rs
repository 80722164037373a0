//! The promise to the citizen, tested end to end: a RECORDING test intake opens every request
//! body it receives (donation envelopes with its HPKE key, OPRF requests, withdrawals) and the
//! test asserts that none of the source's names, CPR number (in any formatting), SSN and other
//! identifiers, street addresses, exact birth dates, patient keys or free-text notes appear.
//!
//! The identifying strings are extracted from the source files by this test itself (plain
//! `serde_json` / `csv`), not by the importer under test. Runs on every published FHIR bundle and
//! on every patient of the published Synthea CSV export (`testdata/data/`).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use datadonor_client::client::{Intake, IntakeConfig, RetryPolicy};
use datadonor_client::minimise::{minimise_paths, MinimiseOptions};
use datadonor_client::session::IntakeSession;
use datadonor_client::{ConsentChoice, TrustAnchors};
use datadonor_schemas::pseudonym::Cpr;
use datadonor_schemas::signing::SigningKey;
use jiff::civil::Date;
use serde_json::Value;
use support::{Recorded, TestIntake};

/// Strings that must never leave, with where they came from.
#[derive(Default)]
struct Needles(BTreeSet<(String, String)>);

impl Needles {
    fn add(&mut self, what: &str, s: &str) {
        let s = s.trim();
        // Very short strings (a one-letter initial, "MD") would match by accident.
        if s.chars().count() >= 4 {
            self.0.insert((s.to_string(), what.to_string()));
        }
    }
    fn add_date(&mut self, d: Date) {
        let (y, m, dd) = (d.year(), d.month(), d.day());
        for f in [
            format!("{y:04}-{m:02}-{dd:02}"),
            format!("{y:04}{m:02}{dd:02}"),
            format!("{dd:02}-{m:02}-{y:04}"),
            format!("{dd:02}.{m:02}.{y:04}"),
            format!("{dd:02}/{m:02}/{y:04}"),
        ] {
            self.add("birth date", &f);
        }
    }
    fn add_cpr(&mut self, cpr: &str) {
        let d: String = cpr.chars().filter(char::is_ascii_digit).collect();
        self.add("CPR", &d);
        self.add("CPR", &format!("{}-{}", &d[..6], &d[6..]));
        self.add("CPR", &format!("{} {}", &d[..6], &d[6..]));
    }
    fn add_ssn(&mut self, ssn: &str) {
        self.add("identifier", ssn);
        let digits: String = ssn.chars().filter(char::is_ascii_digit).collect();
        self.add("identifier", &digits);
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Identifying strings of a FHIR bundle, read independently of the importer.
fn fhir_needles(path: &Path) -> (Needles, Option<Date>) {
    let v: Value = serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    let mut n = Needles::default();
    let mut birth = None;
    for entry in v["entry"].as_array().into_iter().flatten() {
        let r = &entry["resource"];
        if r["resourceType"] == "Patient" {
            if let Some(id) = r["id"].as_str() {
                n.add("patient id", id);
            }
            for name in r["name"].as_array().into_iter().flatten() {
                let mut s = Vec::new();
                strings(&name["given"], &mut s);
                strings(&name["family"], &mut s);
                strings(&name["text"], &mut s);
                s.iter().for_each(|x| n.add("name", x));
            }
            for a in r["address"].as_array().into_iter().flatten() {
                let mut s = Vec::new();
                strings(&a["line"], &mut s);
                strings(&a["text"], &mut s);
                s.iter().for_each(|x| n.add("address", x));
                // Exact postcodes (the 4-digit ones are too short to search for reliably).
                if let Some(pc) = a["postalCode"].as_str().filter(|p| p.len() >= 5) {
                    n.add("postcode", pc);
                }
            }
            for i in r["identifier"].as_array().into_iter().flatten() {
                if let Some(val) = i["value"].as_str() {
                    n.add_ssn(val);
                }
            }
            for t in r["telecom"].as_array().into_iter().flatten() {
                if let Some(val) = t["value"].as_str() {
                    n.add("telecom", val);
                }
            }
            for c in r["contact"].as_array().into_iter().flatten() {
                let mut s = Vec::new();
                strings(&c["name"], &mut s);
                s.iter().for_each(|x| n.add("contact", x));
            }
            if let Some(b) = r["birthDate"].as_str() {
                if let Ok(d) = b.parse::<Date>() {
                    n.add_date(d);
                    birth = Some(d);
                }
            }
        }
        if let Some(s) = r["valueString"].as_str() {
            n.add("free text", s);
        }
        for note in r["note"].as_array().into_iter().flatten() {
            if let Some(s) = note["text"].as_str() {
                n.add("note", s);
            }
        }
    }
    (n, birth)
}

/// A CPR number for a birth date (century digit per the CPR office's table).
fn cpr_for(birth: Date) -> String {
    let century_digit = if birth.year() < 2000 { 1 } else { 4 };
    format!(
        "{:02}{:02}{:02}{}234",
        birth.day(),
        birth.month(),
        birth.year() % 100,
        century_digit
    )
}

fn texts(r: &Recorded) -> Vec<String> {
    std::iter::once(&r.body)
        .chain(r.opened.iter())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

/// Needles shorter than this can occur by chance inside an encoded random value: a
/// four-digit string is somewhere in a given 64-character hex pseudonym about once in a
/// thousand, and a donation carries dozens of them.
const CHANCE_LEN: usize = 8;

/// Byte ranges of `t` that are runs of an encoding of random bytes: at least 32 hex digits
/// (pseudonyms, digests) or at least 40 base64/base64url characters (keys, signatures).
fn encoded_runs(t: &str) -> Vec<std::ops::Range<usize>> {
    fn runs(t: &str, min: usize, class: fn(u8) -> bool) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, b) in t.bytes().chain(std::iter::once(b' ')).enumerate() {
            match (class(b), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    if i - s >= min {
                        out.push(s..i);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        out
    }
    let mut v = runs(t, 32, |b| b.is_ascii_hexdigit());
    v.extend(runs(t, 40, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
    }));
    v
}

/// Whether `needle` occurs in `t` other than by chance: a needle of `CHANCE_LEN` or more
/// characters counts anywhere; a shorter one counts unless the occurrence lies inside one of
/// `t`'s encoded random values (`runs`, from [`encoded_runs`]).
fn leaks(t: &str, runs: &[std::ops::Range<usize>], needle: &str) -> bool {
    if needle.len() >= CHANCE_LEN {
        return t.contains(needle);
    }
    t.match_indices(needle).any(|(i, m)| {
        !runs
            .iter()
            .any(|r| r.start <= i && i + m.len() <= r.end && r.len() > m.len())
    })
}

#[test]
fn a_short_needle_counts_outside_encoded_values_only() {
    let leaks = |t: &str, needle: &str| leaks(t, &encoded_runs(t), needle);
    let hex = "3f6484aa".repeat(8);
    assert!(!leaks(&format!("\"pseudonym\":\"{hex}\""), "6484"));
    assert!(leaks(&format!("{hex} 6484"), "6484"));
    assert!(leaks("\"value\":\"6484\"", "6484"));
    assert!(leaks(&hex, &hex[..12]));
    let b64 = "Ab+/9z_-".repeat(6);
    assert!(!leaks(&format!("{b64}Mary{b64}"), "Mary"));
    assert!(leaks("Mary Smith", "Mary"));
}

fn assert_clean(server: &TestIntake, needles: &Needles, label: &str, from: usize) -> usize {
    let rec = server.recorded();
    assert!(rec.len() > from, "{label}: nothing was sent");
    for r in &rec[from..] {
        for t in texts(r) {
            let runs = encoded_runs(&t);
            for (needle, what) in &needles.0 {
                assert!(
                    !leaks(&t, &runs, needle),
                    "{label}: {what} {needle:?} left the device in a request to {}",
                    r.path
                );
            }
        }
    }
    rec.len()
}

struct Donor<'a> {
    inputs: Vec<&'a Path>,
    options: MinimiseOptions,
    cpr: String,
}

async fn donate_and_withdraw(server: &TestIntake, session: &IntakeSession, d: Donor<'_>) -> bool {
    let study = session
        .intake()
        .study(&support::example_study().id)
        .await
        .expect("study");
    let cpr = Cpr::parse(&d.cpr).expect("cpr");
    let rows = minimise_paths(
        &d.inputs,
        &study.definition,
        d.options.with_cpr(&cpr),
        &mut |_| {},
    )
    .expect("minimise");
    let key = SigningKey::generate().expect("key");
    if rows.rows.is_empty() {
        // Nothing to donate (a child, or no matching measure): the OPRF still must not leak.
        session
            .intake()
            .pseudonym(&cpr, &study.definition)
            .await
            .expect("pseudonymisation");
        return false;
    }
    let consent = ConsentChoice {
        purposes: vec!["t2d-epidemiology".into(), "t2d-care-quality".into()],
        expires_in_days: 30,
        language: None,
    };
    let out = session
        .donate(&study, &rows, &cpr, &key, &consent)
        .await
        .expect("donate");
    session.withdraw(&out.stored, &key).await.expect("withdraw");
    let _ = server;
    true
}

async fn start() -> (TestIntake, IntakeSession) {
    let server = TestIntake::start().await;
    let mut c = IntakeConfig::new(&server.url, TrustAnchors::CaPem(server.ca_pem.clone()));
    c.retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    let session = IntakeSession::connect(Intake::new(c).expect("intake"), None)
        .await
        .expect("connect");
    (server, session)
}

#[tokio::test]
async fn no_identifier_from_any_published_fhir_bundle_leaves_the_device() {
    let (server, session) = start().await;
    let mut donated = 0;
    let mut seen = 0;
    let mut names_checked = 0;
    for path in support::fhir_bundles() {
        let (mut needles, birth) = fhir_needles(&path);
        let birth = birth.unwrap_or(jiff::civil::date(1970, 1, 1));
        let cpr = cpr_for(birth);
        needles.add_cpr(&cpr);
        // One bundle (dcec440c) records its patient's name as data-absent; every bundle has
        // identifiers and an address.
        names_checked += needles.0.iter().filter(|(_, w)| w == "name").count();
        assert!(
            needles.0.iter().any(|(_, w)| w == "address")
                && needles.0.iter().any(|(_, w)| w == "identifier"),
            "{}: test found no identifiers to look for",
            path.display()
        );
        let label = path.display().to_string();
        if donate_and_withdraw(
            &server,
            &session,
            Donor {
                inputs: vec![path.as_path()],
                options: MinimiseOptions::default().with_postcode("5000"),
                cpr,
            },
        )
        .await
        {
            donated += 1;
        }
        seen = assert_clean(&server, &needles, &label, seen);
    }
    assert!(donated >= 3, "only {donated} bundles produced a donation");
    assert!(
        names_checked >= 5,
        "only {names_checked} names were looked for"
    );
}

#[tokio::test]
async fn no_identifier_of_any_synthea_csv_patient_leaves_the_device() {
    let dir = support::testdata("data/synthea_csv");
    let mut patients = csv::Reader::from_path(dir.join("patients.csv")).expect("patients.csv");
    let headers = patients.headers().expect("headers").clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    // Free-text answers in observations.csv, by patient.
    let mut free_text: Vec<(String, String)> = Vec::new();
    let mut obs = csv::Reader::from_path(dir.join("observations.csv")).expect("observations");
    let oh = obs.headers().expect("headers").clone();
    let ocol = |name: &str| oh.iter().position(|h| h == name).expect(name);
    let (op, ov, ot) = (ocol("PATIENT"), ocol("VALUE"), ocol("TYPE"));
    for r in obs.records() {
        let r = r.expect("row");
        if &r[ot] == "text" {
            free_text.push((r[op].to_string(), r[ov].to_string()));
        }
    }
    let (server, session) = start().await;
    let mut seen = 0;
    let mut donated = 0;
    let mut count = 0;
    for rec in patients.records() {
        let rec = rec.expect("row");
        count += 1;
        let id = rec[col("Id")].to_string();
        let mut n = Needles::default();
        n.add("patient id", &id);
        for c in ["FIRST", "LAST", "MAIDEN"] {
            n.add("name", &rec[col(c)]);
        }
        n.add("address", &rec[col("ADDRESS")]);
        if rec[col("ZIP")].len() >= 5 {
            n.add("postcode", &rec[col("ZIP")]);
        }
        for c in ["SSN", "DRIVERS", "PASSPORT"] {
            n.add_ssn(&rec[col(c)]);
        }
        let birth: Date = rec[col("BIRTHDATE")].parse().expect("birth date");
        n.add_date(birth);
        for (p, t) in &free_text {
            if p == &id {
                n.add("free text", t);
            }
        }
        let cpr = cpr_for(birth);
        n.add_cpr(&cpr);
        if donate_and_withdraw(
            &server,
            &session,
            Donor {
                inputs: vec![dir.as_path()],
                options: MinimiseOptions::default()
                    .with_patient(id.clone())
                    .with_postcode("8000"),
                cpr,
            },
        )
        .await
        {
            donated += 1;
        }
        seen = assert_clean(&server, &n, &format!("synthea patient {id}"), seen);
    }
    assert_eq!(count, 27);
    assert!(donated >= 5, "only {donated} patients produced a donation");
}
