//! Golden tests of the `datadonor` CLI: arguments, exit status and stderr are pinned exactly, and
//! `preview --json` on a published FHIR bundle is compared with a committed golden file
//! (`tests/golden/`). Set `DATADONOR_BLESS=1` to rewrite the golden files after a deliberate
//! change.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_study() -> PathBuf {
    manifest_dir().join("../examples/t2d-study.toml")
}

fn bundle() -> PathBuf {
    support::testdata("data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json")
}

fn run(args: &[&str], keystore: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_datadonor"))
        .args(args)
        .env("DATADONOR_HOME", keystore)
        .env_remove("DATADONOR_PASSPHRASE")
        .output()
        .expect("run datadonor")
}

fn check(out: &Output, code: i32, stderr: &str) {
    let got = String::from_utf8_lossy(&out.stderr);
    assert_eq!(got, stderr, "stderr");
    assert_eq!(out.status.code(), Some(code), "exit status; stderr: {got}");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn missing_input_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            "/nonexistent/export.json",
        ],
        tmp.path(),
    );
    check(
        &out,
        3,
        "datadonor: error: /nonexistent/export.json: input file not found\n",
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn malformed_study_file_names_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(example_study()).expect("study");
    let bad = text.replace("min_k = 5", "min_k = \"five\"");
    assert_ne!(bad, text);
    let path = tmp.path().join("bad-study.toml");
    std::fs::write(&path, bad).expect("write");
    let b = bundle();
    let out = run(
        &["preview", "--study", s(&path), "--input", s(&b)],
        tmp.path(),
    );
    check(
        &out,
        3,
        &format!(
            "datadonor: error: {}: line 8, column 9: `min_k = \"five\"`: invalid type: string \"five\", expected u32\n",
            path.display()
        ),
    );
}

#[test]
fn bad_cpr() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (study, b) = (example_study(), bundle());
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--cpr",
            "310290-1234",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        "datadonor: error: --cpr: the CPR number's date part is not a valid date\n",
    );
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--cpr",
            "12345",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        "datadonor: error: --cpr: a CPR number is ten digits, DDMMYY-SSSS\n",
    );
}

#[test]
fn unknown_purpose_is_refused_before_anything_is_sent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (study, b) = (example_study(), bundle());
    let out = run(
        &[
            "donate",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--cpr",
            "0101721234",
            "--purpose",
            "marketing",
            "--expires-days",
            "30",
            "--intake",
            "https://localhost:9",
            "--dangerous-accept-invalid-certs",
            "--yes",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        "datadonor: error: purpose \"marketing\" is not one of the study's purposes (t2d-epidemiology, t2d-care-quality)\n",
    );
}

#[test]
fn missing_ca_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (study, b) = (example_study(), bundle());
    let out = run(
        &[
            "donate",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--cpr",
            "0101721234",
            "--purpose",
            "t2d-epidemiology",
            "--expires-days",
            "30",
            "--intake",
            "https://localhost:9",
            "--yes",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        "datadonor: error: the intake's CA is required: pass --ca <PEM> (there is no platform trust store)\n",
    );
}

#[test]
fn preview_json_on_a_published_fhir_bundle_matches_the_golden_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (study, b) = (example_study(), bundle());
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--postcode",
            "5000",
            "--json",
        ],
        tmp.path(),
    );
    check(&out, 0, "");
    let golden = manifest_dir().join("tests/golden/preview-dab4861f.json");
    let got = String::from_utf8(out.stdout).expect("utf-8");
    if std::env::var_os("DATADONOR_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
        std::fs::write(&golden, &got).expect("bless");
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (run with DATADONOR_BLESS=1)", golden.display()));
    assert_eq!(got, want, "preview differs from {}", golden.display());
    // The golden output itself carries nothing identifying from the bundle.
    for needle in [
        "Price929",
        "Elenore794",
        "Wolf938",
        "999-29-5020",
        "S99913977",
        "1972-06-12",
        "Haag Overpass",
        "01605",
        "dab4861f",
    ] {
        assert!(!got.contains(needle), "{needle} in the preview");
    }
}

/// A record the importer cannot read is skipped, counted, and named in the preview by file,
/// line and field.
#[test]
fn preview_names_the_file_line_and_field_of_a_record_it_could_not_read() {
    let tmp = tempfile::tempdir().expect("tmp");
    let export = tmp.path().join("export");
    std::fs::create_dir(&export).expect("mkdir");
    let source = support::testdata("data/synthea_csv");
    for f in ["patients.csv", "observations.csv", "conditions.csv"] {
        std::fs::copy(source.join(f), export.join(f)).expect("copy");
    }
    let obs = std::fs::read_to_string(export.join("observations.csv")).expect("read");
    let mut lines: Vec<String> = obs.lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("DATE,"), "{}", lines[0]);
    let (date, rest) = lines[5].split_once(',').expect("a row");
    assert!(date.starts_with("20") || date.starts_with("19"), "{date}");
    lines[5] = format!("2019-13-45T99:00:00Z,{rest}");
    std::fs::write(export.join("observations.csv"), lines.join("\n") + "\n").expect("write");
    let patients = std::fs::read_to_string(export.join("patients.csv")).expect("read");
    let patient = patients
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').next())
        .expect("a patient id")
        .to_string();
    let out = run(
        &[
            "preview",
            "--study",
            s(&example_study()),
            "--input",
            s(&export),
            "--patient",
            &patient,
            "--cpr",
            "010172-1234",
            "--postcode",
            "5000",
        ],
        tmp.path(),
    );
    check(&out, 0, "");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        stdout.contains("records skipped by the importer: unparsable date"),
        "{stdout}"
    );
    let want = format!(
        "Records the importer could not read:\n  {}: line 6: field DATE: not a date \"2019-13-45T99:00:00Z\" (skipped: unparsable date)\n",
        export.join("observations.csv").display()
    );
    assert!(stdout.contains(&want), "{stdout}");
}

/// A one-patient FHIR bundle whose Patient names `cpr` under the identifier `system`.
fn bundle_with_cpr(dir: &Path, system: &str, cpr: &str) -> PathBuf {
    let text = format!(
        r#"{{"resourceType":"Bundle","type":"collection","entry":[
  {{"fullUrl":"urn:uuid:p1","resource":{{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1972-01-01",
     "identifier":[{{"system":"{system}","value":"{cpr}"}},{{"value":"MRN-1"}}],
     "address":[{{"postalCode":"8000"}}]}}}},
  {{"resource":{{"resourceType":"Observation","subject":{{"reference":"urn:uuid:p1"}},"effectiveDateTime":"2021-03-04",
     "code":{{"coding":[{{"system":"http://loinc.org","code":"39156-5"}}]}},
     "valueQuantity":{{"value":27.5,"unit":"kg/m2","system":"http://unitsofmeasure.org","code":"kg/m2"}}}}}}]}}"#
    );
    let path = dir.join("export.json");
    std::fs::write(&path, text).expect("write bundle");
    path
}

#[test]
fn a_cpr_differing_from_the_exports_is_refused_without_printing_either() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    let mismatch = "datadonor: error: the CPR number given does not match the one in the export (…-99 vs …-34, first differing at digit 9); check for a typo\n";
    for system in ["urn:oid:1.2.208.176.1.2", "http://cpr.dk"] {
        let b = bundle_with_cpr(tmp.path(), system, "010172-1234");
        let preview = |cpr: &str| {
            run(
                &[
                    "preview",
                    "--study",
                    s(&study),
                    "--input",
                    s(&b),
                    "--cpr",
                    cpr,
                ],
                tmp.path(),
            )
        };
        let out = preview("0101721299");
        check(&out, 4, mismatch);
        assert!(out.stdout.is_empty(), "{system}: nothing previewed");
        // The same number in another notation is the same number.
        let out = preview("0101721234");
        check(&out, 0, "");
        assert!(!out.stdout.is_empty(), "{system}: a preview");

        let out = run(
            &[
                "donate",
                "--study",
                s(&study),
                "--input",
                s(&b),
                "--cpr",
                "010172-1299",
                "--purpose",
                "t2d-epidemiology",
                "--expires-days",
                "30",
                "--intake",
                "https://localhost:9",
                "--dangerous-accept-invalid-certs",
                "--yes",
            ],
            tmp.path(),
        );
        check(&out, 4, mismatch);
    }
    // An export that names no CPR number is not checked.
    let b = bundle_with_cpr(tmp.path(), "http://example.org/mrn", "010172-1234");
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--cpr",
            "0101721299",
        ],
        tmp.path(),
    );
    check(&out, 0, "");
}
