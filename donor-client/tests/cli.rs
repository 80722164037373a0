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

/// What `--cpr VALUE` prints before anything else.
const CPR_WARNING: &str = "datadonor: warning: --cpr with a value is visible to other users of this computer (in the process list) and kept in your shell history; use --cpr-file PATH or --cpr - (stdin), or leave it out to be asked\n";

/// Runs the CLI with `stdin` piped in.
fn run_with_stdin(args: &[&str], keystore: &Path, stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor"))
        .args(args)
        .env("DATADONOR_HOME", keystore)
        .env_remove("DATADONOR_PASSPHRASE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run datadonor");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
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
        &format!("{CPR_WARNING}datadonor: error: --cpr: the CPR number's date part is not a valid date\n"),
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
        &format!("{CPR_WARNING}datadonor: error: --cpr: a CPR number is ten digits, DDMMYY-SSSS\n"),
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
            "--no-passphrase",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        &format!("{CPR_WARNING}datadonor: error: purpose \"marketing\" is not one of the study's purposes (t2d-epidemiology, t2d-care-quality)\n"),
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
            "--postcode",
            "5000",
            "--yes",
            "--no-passphrase",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        &format!("{CPR_WARNING}datadonor: error: the intake's CA is required: pass --ca <PEM> (there is no platform trust store)\n"),
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
    check(&out, 0, CPR_WARNING);
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
    let mismatch = format!("{CPR_WARNING}datadonor: error: the CPR number given does not match the one in the export (…-99 vs …-34, first differing at digit 9); check for a typo\n");
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
        check(&out, 4, &mismatch);
        assert!(out.stdout.is_empty(), "{system}: nothing previewed");
        // The same number in another notation is the same number.
        let out = preview("0101721234");
        check(&out, 0, CPR_WARNING);
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
                "--no-passphrase",
            ],
            tmp.path(),
        );
        check(&out, 4, &mismatch);
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
    check(&out, 0, CPR_WARNING);
}

#[test]
fn the_cpr_number_from_a_file_or_stdin_is_used_without_a_warning_and_never_printed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    let b = bundle_with_cpr(tmp.path(), "urn:oid:1.2.208.176.1.2", "010172-1234");
    let cpr_file = tmp.path().join("cpr");
    let args = |extra: &[&str]| -> Vec<String> {
        ["preview", "--study", s(&study), "--input", s(&b)]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };

    std::fs::write(&cpr_file, "010172-1234\n").expect("write");
    let out = run(&refs(&args(&["--cpr-file", s(&cpr_file)])), tmp.path());
    check(&out, 0, "");
    assert!(!out.stdout.is_empty());
    let out = run_with_stdin(&refs(&args(&["--cpr", "-"])), tmp.path(), b"0101721234\n");
    check(&out, 0, "");

    // Checked like --cpr, and the number is not echoed in the error.
    std::fs::write(&cpr_file, "0101721299").expect("write");
    let out = run(&refs(&args(&["--cpr-file", s(&cpr_file)])), tmp.path());
    check(
        &out,
        4,
        "datadonor: error: the CPR number given does not match the one in the export (…-99 vs …-34, first differing at digit 9); check for a typo\n",
    );
    std::fs::write(&cpr_file, "3102901234").expect("write");
    let out = run(&refs(&args(&["--cpr-file", s(&cpr_file)])), tmp.path());
    check(
        &out,
        4,
        &format!(
            "datadonor: error: --cpr-file {}: the CPR number's date part is not a valid date\n",
            cpr_file.display()
        ),
    );
    let out = run_with_stdin(&refs(&args(&["--cpr", "-"])), tmp.path(), b"12345\n");
    check(
        &out,
        4,
        "datadonor: error: --cpr - (stdin): a CPR number is ten digits, DDMMYY-SSSS\n",
    );
    let missing = tmp.path().join("no-such-file");
    let out = run(&refs(&args(&["--cpr-file", s(&missing)])), tmp.path());
    assert_eq!(out.status.code(), Some(3));
    let out = run(
        &refs(&args(&["--cpr-file", s(&cpr_file), "--cpr", "0101721234"])),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2), "--cpr and --cpr-file conflict");
}

/// The arguments of a donate that stops before any request (the intake is not there).
fn donate_args<'a>(study: &'a Path, export: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "donate",
        "--study",
        s(study),
        "--input",
        s(export),
        "--purpose",
        "t2d-epidemiology",
        "--expires-days",
        "30",
        "--intake",
        "https://localhost:9",
        "--dangerous-accept-invalid-certs",
        "--yes",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn donate_without_a_cpr_number_or_a_passphrase_source_fails_when_it_cannot_ask() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (study, b) = (example_study(), bundle());
    let cpr_file = tmp.path().join("cpr");
    std::fs::write(&cpr_file, "0101721234").expect("write");
    // Not a terminal: nothing can be asked.
    let out = run(
        &donate_args(&study, &b, &["--cpr-file", s(&cpr_file)]),
        tmp.path(),
    );
    check(
        &out,
        4,
        "datadonor: error: no passphrase for the key store: give --passphrase-file FILE or set DATADONOR_PASSPHRASE, or pass --no-passphrase for a donor key protected only by file permissions\n",
    );
    let out = run(&donate_args(&study, &b, &["--no-passphrase"]), tmp.path());
    check(
        &out,
        4,
        "datadonor: error: no CPR number: give --cpr-file PATH or --cpr - (read from stdin), or run in a terminal to be asked\n",
    );
    let out = run(
        &[
            "withdraw",
            "--study",
            "t2d-dk",
            "--intake",
            "https://localhost:9",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no passphrase for the key store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !tmp.path().join("donor-key.json").exists(),
        "no key was created"
    );
}

#[test]
fn postcodes_are_checked_and_missing_ones_explained() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    let b = bundle();
    for (postcode, why) in [
        ("99999", "a Danish postcode is four digits, e.g. 5000"),
        ("50a0", "a Danish postcode is four digits, e.g. 5000"),
        ("0999", "not a Danish postcode"),
        ("\u{1b}[2J", "a Danish postcode is four digits, e.g. 5000"),
    ] {
        let out = run(
            &[
                "preview",
                "--study",
                s(&study),
                "--input",
                s(&b),
                "--postcode",
                postcode,
            ],
            tmp.path(),
        );
        let shown = postcode.replace('\u{1b}', "\\u{1b}");
        check(
            &out,
            4,
            &format!("datadonor: error: --postcode {shown}: {why}\n"),
        );
    }
    // An export without a Danish postcode: no row, and the preview says why and what to do.
    let out = run(
        &["preview", "--study", s(&study), "--input", s(&b)],
        tmp.path(),
    );
    check(&out, 0, "");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        stdout.contains("0 row(s) would leave this device"),
        "{stdout}"
    );
    assert!(
        stdout.contains("period(s) dropped because the postcode is missing from the export or not Danish (Apple Health exports have none): give your Danish postcode with --postcode NNNN"),
        "{stdout}"
    );
    let out = run(
        &["preview", "--study", s(&study), "--input", s(&b), "--json"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("datadonor: warning: ") && stderr.contains("--postcode NNNN"),
        "{stderr}"
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout stays JSON");
    // donate refuses with the same reason.
    let cpr_file = tmp.path().join("cpr");
    std::fs::write(&cpr_file, "0101721234").expect("write");
    let out = run(
        &donate_args(&study, &b, &["--cpr-file", s(&cpr_file), "--no-passphrase"]),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(9));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("datadonor: error: nothing to donate: ")
            && stderr.contains("--postcode NNNN"),
        "{stderr}"
    );
}

/// A Synthea CSV export with two patients: patients.csv and observations.csv.
fn two_patient_export(dir: &Path, second_id: &str) -> PathBuf {
    let export = dir.join("two-patients");
    std::fs::create_dir_all(&export).expect("mkdir");
    std::fs::write(
        export.join("patients.csv"),
        format!(
            "Id,BIRTHDATE,GENDER,ZIP\np-one,1970-01-01,F,5000\n{second_id},1980-01-01,M,8000\n"
        ),
    )
    .expect("patients");
    export
}

#[test]
fn patient_selection_names_the_patients_found_escaped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    let export = two_patient_export(tmp.path(), "p-\u{1b}]0;owned\u{7}two");
    let out = run(
        &["preview", "--study", s(&study), "--input", s(&export)],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains(r#"the export holds records of more than one patient (patients found: "p-one", "p-\u{1b}]0;owned\u{7}two"); choose the donor's own with --patient ID"#),
        "{stderr}"
    );
    assert_no_control_bytes(&out.stderr);

    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&export),
            "--patient",
            "p-\u{9b}3",
        ],
        tmp.path(),
    );
    check(
        &out,
        4,
        "datadonor: error: --patient \"p-\\u{9b}3\": no record of this patient in the export (patients found: \"p-one\", \"p-\\u{1b}]0;owned\\u{7}two\")\n",
    );
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&export),
            "--patient",
            "p-one",
            "--postcode",
            "5000",
        ],
        tmp.path(),
    );
    check(&out, 0, "");
}

/// Stderr holds no control character but the line ends.
fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn assert_no_control_bytes(stderr: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

#[test]
fn source_text_in_messages_reaches_the_terminal_escaped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    // A fatal error quoting the file: the root element's name.
    let xml = tmp.path().join("export.xml");
    std::fs::write(&xml, "<Health\u{1b}[31mData>\n</Health\u{1b}[31mData>\n").expect("write");
    let out = run(
        &["preview", "--study", s(&study), "--input", s(&xml)],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert_no_control_bytes(&out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r"the root element is <Health\u{1b}[31mData>"),
        "{stderr}"
    );

    // Problems with records, quoted in the preview: codes, ids, values, units.
    let fhir = tmp.path().join("bundle.json");
    std::fs::write(
        &fhir,
        r#"{"resourceType":"Bundle","type":"collection","entry":[
 {"resource":{"resourceType":"Patient","id":"p\u001b[31m1","gender":"female","birthDate":"1972-01-01"}},
 {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p\u001b[31m1"},"effectiveDateTime":"2021-03-04",
   "code":{"coding":[{"system":"http://loinc.org","code":"4548\u001b[2J"}]},"valueQuantity":{"value":6,"unit":"%"}}},
 {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p\u001b[31m1"},"effectiveDateTime":"2021\u0007",
   "code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"valueQuantity":{"value":6,"unit":"%"}}},
 {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p\u001b[31m1"},"effectiveDateTime":"2021-03-04",
   "code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"valueQuantity":{"value":"6\u009b1m","unit":"%"}}},
 {"resource":{"resourceType":"Enc\u001b]0;title\u0007ounter"}}
]}"#,
    )
    .expect("write");
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&fhir),
            "--postcode",
            "5000",
        ],
        tmp.path(),
    );
    check(&out, 0, "");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{stdout:?}"
    );
    for quoted in [r#""4548\u{1b}[2J""#, r#""2021\u{7}""#, r#""6\u{9b}1m""#] {
        assert!(stdout.contains(quoted), "{quoted} in {stdout}");
    }
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&fhir),
            "--patient",
            "p\u{1b}[31m2",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(4));
    assert_no_control_bytes(&out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"patients found: "p\u{1b}[31m1""#),
        "{stderr}"
    );
}

/// Runs the CLI in a pseudo-terminal (util-linux `script`), typing `input` once the prompt is up;
/// everything the terminal showed.
fn run_in_terminal(args: &[&str], keystore: &Path, input: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let command = std::iter::once(env!("CARGO_BIN_EXE_datadonor"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("DATADONOR_HOME", keystore)
        .env_remove("DATADONOR_PASSPHRASE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script, to run the CLI in a terminal");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(std::time::Duration::from_secs(2));
    stdin.write_all(input.as_bytes()).expect("type");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn in_a_terminal_the_cpr_number_is_asked_for_and_not_echoed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let study = example_study();
    let b = bundle_with_cpr(tmp.path(), "urn:oid:1.2.208.176.1.2", "010172-1234");
    let (code, shown) = run_in_terminal(
        &["preview", "--study", s(&study), "--input", s(&b)],
        tmp.path(),
        "0101721299\n",
    );
    assert!(
        shown.starts_with("Your CPR number (not shown; used only on this device; Enter to skip): "),
        "{shown:?}"
    );
    assert!(!shown.contains("0101721299"), "echoed: {shown:?}");
    // The number typed was used: it is checked against the export's.
    assert_eq!(code, Some(4), "{shown:?}");
    assert!(
        shown.contains("the CPR number given does not match"),
        "{shown:?}"
    );
}

#[test]
fn the_preview_table_shows_control_characters_escaped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(example_study()).expect("study");
    let hostile = text.replacen(
        "title = \"Type 2 diabetes in Denmark",
        "title = \"\\u001b]0;owned\\u0007Type 2 diabetes in Denmark",
        1,
    );
    assert_ne!(hostile, text);
    let study = tmp.path().join("study.toml");
    std::fs::write(&study, hostile).expect("write");
    let b = bundle();
    let out = run(
        &[
            "preview",
            "--study",
            s(&study),
            "--input",
            s(&b),
            "--postcode",
            "5000",
        ],
        tmp.path(),
    );
    check(&out, 0, "");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{stdout:?}"
    );
    assert!(
        stdout.contains(r"\u{1b}]0;owned\u{7}Type 2 diabetes in Denmark"),
        "{stdout}"
    );
}
