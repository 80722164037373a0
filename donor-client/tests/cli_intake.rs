//! End-to-end test of the `datadonor` CLI binary against a real, in-process intake
//! (`datadonor_intake::start`): `donate`, `receipts`, `verify` and `withdraw` on a published
//! FHIR bundle (`testdata/data/fhir/`), then the intake's own ledger is checked for the entries
//! the CLI caused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datadonor_client::keystore::{KeyProtection, Keystore, Passphrase};
use datadonor_schemas::ledger::LedgerEntry;

const STUDY: &str = "t2d-dk";

mod data;
#[path = "support/live.rs"]
mod live;
use data::testdata;

fn bundle() -> PathBuf {
    testdata("data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json")
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Run the CLI on a blocking thread, so that the intake keeps serving on the test's runtime.
async fn datadonor(args: Vec<String>, home: PathBuf) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_datadonor"))
            .args(&args)
            .env("DATADONOR_HOME", &home)
            .env_remove("DATADONOR_PASSPHRASE")
            .output()
            .expect("run datadonor")
    })
    .await
    .expect("join the CLI thread")
}

/// Runs the CLI in a pseudo-terminal (util-linux `script`), typing `input` line by line once the
/// prompts are up; the exit status and everything the terminal showed.
async fn in_terminal(args: Vec<String>, input: &'static str) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let command = std::iter::once(env!("CARGO_BIN_EXE_datadonor").to_string())
            .chain(args)
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env_remove("DATADONOR_PASSPHRASE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("util-linux script, to run the CLI in a terminal");
        let mut stdin = child.stdin.take().expect("stdin");
        for line in input.split_inclusive('\n') {
            std::thread::sleep(std::time::Duration::from_secs(2));
            stdin.write_all(line.as_bytes()).expect("type");
        }
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .expect("join the terminal thread")
}

/// Assert exit status 0 and return stdout.
fn ok(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit status\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        !stderr.contains("datadonor: error"),
        "{what}: error on stderr: {stderr}"
    );
    stdout
}

/// The line of `stdout` starting with `prefix`.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
}

/// The path after "stored in " at the end of a line.
fn stored_path(l: &str) -> PathBuf {
    let (_, p) = l
        .rsplit_once(" stored in ")
        .unwrap_or_else(|| panic!("no receipt path in {l:?}"));
    PathBuf::from(p.trim())
}

/// The ledger index after "at ledger index ".
fn ledger_index(l: &str) -> u64 {
    let (_, rest) = l
        .split_once("at ledger index ")
        .unwrap_or_else(|| panic!("no ledger index in {l:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad ledger index in {l:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn donate_receipts_verify_withdraw_against_a_real_intake() {
    let input = bundle();
    let (live, config) = live::prepare().await;
    let intake_dir = live.intake_dir.clone();
    let home = tempfile::tempdir().expect("keystore dir");
    let intake = datadonor_intake::start(config).await.expect("start intake");
    let url = intake.base_url();
    let ca = s(&intake.ca_pem_path());
    let pseudonymiser_ca = s(&live.pseudonymiser_ca());
    let ks = s(home.path());
    let auditor_token = std::fs::read_to_string(intake_dir.join("auditor.token"))
        .expect("auditor.token")
        .trim()
        .to_string();

    // donate: the CPR number from a file, a key store without a passphrase
    let cpr_file = live.data.path().join("cpr");
    std::fs::write(&cpr_file, "010172-1234\n").expect("cpr file");
    let args: Vec<String> = [
        "--keystore",
        &ks,
        "donate",
        "--study",
        STUDY,
        "--input",
        &s(&input),
        "--cpr-file",
        &s(&cpr_file),
        "--postcode",
        "5000",
        "--purpose",
        "t2d-epidemiology",
        "--expires-days",
        "365",
        "--intake",
        &url,
        "--ca",
        &ca,
        "--ca",
        &pseudonymiser_ca,
        "--yes",
        "--no-passphrase",
    ]
    .map(String::from)
    .to_vec();
    let out = datadonor(args, home.path().to_path_buf()).await;
    let stdout = ok("donate", &out);
    let key_file = home.path().join("donor-key.json");
    let warning = format!("datadonor: warning: the donor key in {} is not protected by a passphrase (--no-passphrase): anyone who can read that file can sign donations and withdrawals as you\n", key_file.display());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&warning),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        Keystore::open(home.path())
            .expect("key store")
            .key_protection()
            .expect("key file"),
        Some(KeyProtection::None)
    );
    assert!(
        stdout.contains("Study signed by steward key "),
        "donate stdout: {stdout}"
    );
    let pseudonymised = line(&stdout, "Pseudonym computed on this device from ");
    assert!(
        pseudonymised
            .starts_with("Pseudonym computed on this device from 2 of 3 pseudonymiser instances"),
        "{pseudonymised}"
    );
    let donated = line(&stdout, "Donated ");
    assert!(
        donated.contains(&format!(" rows to {STUDY} at ledger index ")),
        "{donated}"
    );
    assert!(
        donated.contains("receipt verified and stored in "),
        "{donated}"
    );
    let rows: u32 = donated
        .strip_prefix("Donated ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("row count");
    assert!(rows > 0, "{donated}");
    let donation_index = ledger_index(donated);
    let donation_receipt = stored_path(donated);
    assert!(donation_receipt.is_file(), "{}", donation_receipt.display());
    assert!(donation_receipt.starts_with(home.path()));

    // receipts
    let args = ["--keystore", &ks, "receipts"].map(String::from).to_vec();
    let out = datadonor(args, home.path().to_path_buf()).await;
    let stdout = ok("receipts", &out);
    assert_eq!(
        stdout,
        format!(
            "Donation\t{STUDY}\tindex {donation_index}\t{url}\t{}\n",
            donation_receipt.display()
        )
    );

    // verify, against the receipt's own checkpoint: offline, so no --ca
    let args: Vec<String> = ["--keystore", &ks, "verify", &s(&donation_receipt)]
        .map(String::from)
        .to_vec();
    let out = datadonor(args, home.path().to_path_buf()).await;
    let stdout = ok("verify", &out);
    assert!(
        stdout.starts_with("receipt verified against its own checkpoint only (tree of "),
        "verify stdout: {stdout}"
    );

    // verify, against the intake's current checkpoint: without any token (the checkpoint and
    // proofs are public), with the auditor token, and with the token read from a file as the
    // analytics CLI takes it
    let receipt_arg = s(&donation_receipt);
    let token_file = format!("@{}", s(&intake_dir.join("auditor.token")));
    let current =
        format!("receipt verified: entry {donation_index} is in the intake's current tree of ");
    for extra in [
        vec![],
        vec!["--auditor-token", auditor_token.as_str()],
        vec!["--auditor-token", token_file.as_str()],
    ] {
        let mut args: Vec<String> = ["--keystore", &ks, "verify", &receipt_arg, "--ca", &ca]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        let what = format!("verify --ca {}", extra.join(" "));
        let out = datadonor(args, home.path().to_path_buf()).await;
        let stdout = ok(&what, &out);
        assert!(stdout.starts_with(&current), "{what} stdout: {stdout}");
    }

    // withdraw: the unprotected key store is used only with --no-passphrase ...
    let passphrase_file = live.data.path().join("passphrase");
    std::fs::write(&passphrase_file, "correct horse battery staple\n").expect("passphrase file");
    let withdraw = |extra: &[&str]| -> Vec<String> {
        [
            "--keystore",
            &ks,
            "withdraw",
            "--study",
            STUDY,
            "--intake",
            &url,
            "--ca",
            &ca,
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    let refused = |out: &Output, what: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(4), "{what}: {stderr}");
        stderr
    };
    let out = datadonor(
        withdraw(&["--passphrase-file", &s(&passphrase_file)]),
        home.path().to_path_buf(),
    )
    .await;
    assert_eq!(
        refused(&out, "a passphrase for an unprotected key"),
        format!("datadonor: error: {}: the donor key is stored without a passphrase; pass --no-passphrase to use it\n", key_file.display())
    );
    let out = datadonor(withdraw(&[]), home.path().to_path_buf()).await;
    assert!(refused(&out, "no passphrase source").contains("no passphrase for the key store"));
    // ... and a key store protected by a passphrase (the same receipt, another key) only with it.
    let protected = tempfile::tempdir().expect("second keystore dir");
    Keystore::open(protected.path())
        .expect("key store")
        .donor_key(Some(&Passphrase::new(
            "correct horse battery staple".into(),
        )))
        .expect("protected key");
    let receipt_copy = protected.path().join(
        donation_receipt
            .strip_prefix(home.path())
            .expect("in the key store"),
    );
    std::fs::create_dir_all(receipt_copy.parent().expect("dir")).expect("mkdir");
    std::fs::copy(&donation_receipt, &receipt_copy).expect("copy receipt");
    let in_protected = |extra: &[&str]| -> Vec<String> {
        let mut args = withdraw(extra);
        args[1] = s(protected.path());
        args
    };
    let out = datadonor(
        in_protected(&["--no-passphrase"]),
        protected.path().to_path_buf(),
    )
    .await;
    assert!(
        refused(&out, "--no-passphrase for a protected key").contains(
            "the donor key is protected by a passphrase; give it with --passphrase-file or DATADONOR_PASSPHRASE instead of --no-passphrase"
        )
    );
    std::fs::write(live.data.path().join("wrong"), "wrong").expect("wrong passphrase file");
    let wrong = s(&live.data.path().join("wrong"));
    let out = datadonor(
        in_protected(&["--passphrase-file", &wrong]),
        protected.path().to_path_buf(),
    )
    .await;
    assert!(refused(&out, "a wrong passphrase").contains("wrong passphrase"));
    // In a terminal the passphrase is asked for: once for the existing key ...
    let (code, shown) = in_terminal(in_protected(&[]), "not the passphrase\n").await;
    assert_eq!(code, Some(4), "{shown:?}");
    assert!(shown.starts_with("Key store passphrase: "), "{shown:?}");
    assert!(shown.contains("wrong passphrase"), "{shown:?}");
    assert!(!shown.contains("not the passphrase"), "echoed: {shown:?}");
    // ... and twice for a new one, which is not created when the two differ.
    let fresh = tempfile::tempdir().expect("third keystore dir");
    let receipt_copy = fresh.path().join(
        donation_receipt
            .strip_prefix(home.path())
            .expect("in the key store"),
    );
    std::fs::create_dir_all(receipt_copy.parent().expect("dir")).expect("mkdir");
    std::fs::copy(&donation_receipt, &receipt_copy).expect("copy receipt");
    let mut args = withdraw(&[]);
    args[1] = s(fresh.path());
    let (code, shown) = in_terminal(args, "first secret\nsecond secret\n").await;
    assert_eq!(code, Some(4), "{shown:?}");
    assert!(shown.contains("New key store passphrase: "), "{shown:?}");
    assert!(shown.contains("The same passphrase again: "), "{shown:?}");
    assert!(
        shown.contains("the two passphrases differ; nothing was created"),
        "{shown:?}"
    );
    assert!(!shown.contains("secret"), "echoed: {shown:?}");
    assert!(!fresh.path().join("donor-key.json").exists());

    // withdraw
    let args: Vec<String> = [
        "--keystore",
        &ks,
        "withdraw",
        "--study",
        STUDY,
        "--intake",
        &url,
        "--ca",
        &ca,
        "--no-passphrase",
    ]
    .map(String::from)
    .to_vec();
    let out = datadonor(args, home.path().to_path_buf()).await;
    let stdout = ok("withdraw", &out);
    let withdrawn = line(
        &stdout,
        &format!("Consent withdrawn for study {STUDY} at ledger index "),
    );
    let withdrawal_index = ledger_index(withdrawn);
    assert!(withdrawal_index > donation_index, "{withdrawn}");
    let withdrawal_receipt = stored_path(withdrawn);
    assert!(withdrawal_receipt.is_file());

    // receipts now lists both
    let args = ["--keystore", &ks, "receipts"].map(String::from).to_vec();
    let out = datadonor(args, home.path().to_path_buf()).await;
    let stdout = ok("receipts after withdraw", &out);
    assert!(
        stdout.contains(&format!(
            "Donation\t{STUDY}\tindex {donation_index}\t{url}\t"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "Withdrawal\t{STUDY}\tindex {withdrawal_index}\t{url}\t{}",
            withdrawal_receipt.display()
        )),
        "{stdout}"
    );

    // The intake's ledger holds the consent, the donation and the withdrawal, at those indexes.
    let entries: Vec<LedgerEntry> = {
        let state = intake
            .state()
            .sequencing()
            .expect("a sequencer")
            .state
            .read()
            .expect("ledger lock");
        let size = state.published_size();
        assert!(size > withdrawal_index, "published size {size}");
        state
            .entries(0, size)
            .expect("a readable ledger")
            .expect("published entries")
            .iter()
            .map(|b| LedgerEntry::from_bytes(b).expect("ledger entry"))
            .collect()
    };
    let at = |i: u64| &entries[usize::try_from(i).expect("index")];
    let (pseudonym, record) = match at(donation_index) {
        LedgerEntry::DonationAccepted {
            study_id,
            pseudonym,
            consent_record_id,
            rows: accepted,
            ..
        } => {
            assert_eq!(study_id.as_str(), STUDY);
            assert_eq!(*accepted, rows, "rows accepted vs rows the CLI reported");
            (*pseudonym, *consent_record_id)
        }
        other => panic!("entry {donation_index}: expected DonationAccepted, got {other:?}"),
    };
    let granted: Vec<_> = entries
        .iter()
        .filter_map(|e| match e {
            LedgerEntry::ConsentGranted {
                study_id,
                pseudonym: p,
                consent_record_id,
                purposes,
                given_at,
                expires_at,
                ..
            } if *p == pseudonym && *consent_record_id == record => {
                Some((study_id.as_str(), purposes.clone(), expires_at - given_at))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        granted,
        vec![(STUDY, vec!["t2d-epidemiology".to_string()], 365 * 86_400)],
        "ConsentGranted entries for the donation"
    );
    match at(withdrawal_index) {
        LedgerEntry::ConsentWithdrawn {
            study_id,
            pseudonym: p,
            consent_record_id,
            ..
        } => {
            assert_eq!(study_id.as_str(), STUDY);
            assert_eq!(*p, pseudonym);
            assert_eq!(*consent_record_id, record);
        }
        other => panic!("entry {withdrawal_index}: expected ConsentWithdrawn, got {other:?}"),
    }

    intake.shutdown().await.expect("intake shutdown");
}
