//! `datadonor`: the donor's command line, a thin layer over the `datadonor_client` library.
//!
//! Exit codes (stable; pinned by the CLI golden tests):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | internal error |
//! | 2 | usage error (unknown option, missing argument) |
//! | 3 | an input file (export or study) is missing, unreadable or malformed |
//! | 4 | the donor's own input is invalid (CPR number, purpose, expiry, passphrase) |
//! | 5 | network or TLS failure (after retries) |
//! | 6 | the intake refused the request (its problem slug is printed) |
//! | 7 | verification failed (study signature, receipt, ledger key, consistency, or the witness quorum) |
//! | 8 | the local key store failed |
//! | 9 | nothing donated: no rows to donate, or the donor did not confirm |
//!
//! Errors are one line on stderr: `datadonor: error: <file>: <record>: <field>: <what>`.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use datadonor_client::client::{
    AuditorToken, ClientError, DonorCredentialToken, Intake, IntakeConfig, LedgerTrust,
    PublishedStudy, WitnessPolicy,
};
use datadonor_client::donation::{ConsentChoice, DonationError};
use datadonor_client::import::escape_controls;
use datadonor_client::keystore::{
    read_receipt, KeyProtection, Keystore, KeystoreError, Passphrase, WitnessPin,
};
use datadonor_client::minimise::{minimise_paths, DropReason, MinimiseError, MinimiseOptions};
use datadonor_client::preview::Preview;
use datadonor_client::session::{IntakeSession, SessionError};
use datadonor_client::TrustAnchors;
use datadonor_schemas::geo::municipality_of_postcode;
use datadonor_schemas::pseudonym::Cpr;
use datadonor_schemas::signing::{PublicKey, SignedObject, SigningKey};
use datadonor_schemas::study::{StudyDefinition, StudyError, StudyId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zeroize::Zeroizing;

/// Donate your own health data to research: nothing identifying leaves this device.
#[derive(Parser)]
#[command(name = "datadonor", version, about)]
struct Cli {
    /// Key store directory (default: $DATADONOR_HOME or ~/.datadonor).
    #[arg(long, global = true, value_name = "DIR")]
    keystore: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show exactly what would leave this device, without sending anything.
    Preview(PreviewArgs),
    /// Preview, consent, seal and send a donation; verify and store the receipt.
    Donate(DonateArgs),
    /// List the stored receipts.
    Receipts,
    /// Re-verify a stored receipt against the intake's ledger.
    Verify(VerifyArgs),
    /// Withdraw the consent of your latest donation to a study.
    Withdraw(WithdrawArgs),
    /// The donor's app: serve it on this device (127.0.0.1) and open it in the browser.
    App(AppArgs),
}

#[derive(Args)]
struct AppArgs {
    /// The intake, https://host[:port].
    #[arg(long, value_name = "URL")]
    intake: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// File holding the key store passphrase (or set DATADONOR_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// The donor credential the study's enrolment issued (`@FILE`), for pseudonymiser
    /// instances that require one.
    #[arg(long, value_name = "@FILE")]
    credential: Option<String>,
    #[command(flatten)]
    witness: WitnessArgs,
    /// The largest export the app accepts, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    max_upload_mib: u64,
    /// Only print the address; do not open the browser.
    #[arg(long)]
    no_browser: bool,
}

fn cmd_app(args: &AppArgs, ks_dir: Option<&PathBuf>) -> Result<(), Failure> {
    let mut intake = intake_for(&args.intake, &args.tls, None)?;
    if let Some(c) = &args.credential {
        intake = intake.with_credential(DonorCredentialToken::new(&secret_arg(c)?));
    }
    let ks = keystore(ks_dir)?;
    let witnesses = witness_policy(&ks, intake.base_url(), &args.witness)?;
    let config = datadonor_client::app::AppConfig::new(intake, ks)
        .with_passphrase(passphrase(args.passphrase_file.as_ref())?)
        .with_witnesses(witnesses)
        .with_max_upload_bytes(args.max_upload_mib.saturating_mul(1024 * 1024));
    datadonor_client::app::run(config, !args.no_browser).map_err(|e| fail(1, e.to_string()))
}

#[derive(Args)]
struct ExportArgs {
    /// The study: a TOML or signed JSON file, an https:// URL, or (for donate) a study id.
    #[arg(long, value_name = "FILE|URL")]
    study: String,
    /// The export: FHIR JSON/NDJSON, a Synthea CSV directory or table, Apple Health XML/zip.
    #[arg(long = "input", value_name = "PATH", required = true)]
    inputs: Vec<PathBuf>,
    /// In an export with several patients, the local id of your own record (an id the export
    /// does not hold is refused, listing those it holds).
    #[arg(long, value_name = "ID")]
    patient: Option<String>,
    /// Your Danish postcode (four digits), if the export's is missing or not Danish: Apple Health
    /// exports have none, and without a postcode no row can leave.
    #[arg(long, value_name = "NNNN")]
    postcode: Option<String>,
}

/// Where the CPR number comes from. Not given, it is asked for (without echo) in a terminal.
#[derive(Args)]
struct CprArgs {
    /// Your CPR number, or `-` to read it from stdin. A value given here is visible to other
    /// users of this computer and kept in your shell history: prefer --cpr-file, `--cpr -` or
    /// the prompt.
    #[arg(long, value_name = "DDMMYY-SSSS|-", conflicts_with = "cpr_file")]
    cpr: Option<String>,
    /// A file holding your CPR number.
    #[arg(long, value_name = "PATH")]
    cpr_file: Option<PathBuf>,
}

/// How the key store's donor key is protected. Without an option, the passphrase is asked for
/// (twice when the key is created) in a terminal.
#[derive(Args)]
struct PassphraseArgs {
    /// File holding the key store passphrase (or set DATADONOR_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Create or use a key store whose donor key has no passphrase, protected only by the file's
    /// permissions.
    #[arg(long, conflicts_with = "passphrase_file")]
    no_passphrase: bool,
}

#[derive(Args)]
struct TlsArgs {
    /// CA certificate(s) (PEM) to trust for the intake and the pseudonymiser instances
    /// (repeatable; a file may hold several certificates).
    #[arg(long, value_name = "PEM")]
    ca: Vec<PathBuf>,
    /// Accept any server certificate. Development only.
    #[arg(long)]
    dangerous_accept_invalid_certs: bool,
    /// Steward public key (base64 Ed25519) the study must be signed by.
    #[arg(long, value_name = "B64")]
    steward_key: Option<String>,
}

#[derive(Args)]
struct WitnessArgs {
    /// A witness whose cosignature every checkpoint of this intake must carry, as its verifier
    /// key `<name>+<key ID>+<base64>` (repeatable). Given, these witnesses are pinned for the
    /// intake in the key store (replacing any pinned before); not given, the pinned ones apply.
    /// None pinned (the default): checkpoints need only the ledger's signature.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// How many of the --witness keys must have cosigned each checkpoint (default: all).
    #[arg(long, value_name = "N", requires = "witnesses")]
    witness_quorum: Option<usize>,
}

#[derive(Args)]
struct PreviewArgs {
    #[command(flatten)]
    export: ExportArgs,
    /// Your CPR number (used only on this device: for the birth date if the export has none, and
    /// checked against a CPR number the export names).
    #[command(flatten)]
    cpr: CprArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct DonateArgs {
    #[command(flatten)]
    export: ExportArgs,
    /// Your CPR number: it never leaves this device (only a blinded OPRF element does).
    #[command(flatten)]
    cpr: CprArgs,
    /// A purpose you consent to (repeatable); one of the study's purpose codes.
    #[arg(long = "purpose", value_name = "CODE", required = true)]
    purposes: Vec<String>,
    /// Days until your consent lapses (at most the study's maximum).
    #[arg(long, value_name = "N")]
    expires_days: u32,
    /// The intake, https://host[:port].
    #[arg(long, value_name = "URL")]
    intake: String,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// The donor credential the study's enrolment issued (`@FILE`), for pseudonymiser
    /// instances that require one.
    #[arg(long, value_name = "@FILE")]
    credential: Option<String>,
    #[command(flatten)]
    witness: WitnessArgs,
    /// The language of the consent notice to show and sign (one the study gives, e.g. `da`,
    /// `en`; default: from $LANG when the study gives it, else the study's own).
    #[arg(long, value_name = "CODE")]
    language: Option<String>,
}

#[derive(Args)]
struct VerifyArgs {
    /// A stored receipt file (see `datadonor receipts`).
    receipt: PathBuf,
    #[command(flatten)]
    tls: TlsArgs,
    /// Auditor token for the ledger read endpoints, to check the receipt against the intake's
    /// current checkpoint (online: needs --ca): the token, or `@FILE` to read it from a file.
    /// Without it the receipt is checked offline against its own checkpoint and the pinned
    /// ledger key.
    #[arg(long, value_name = "HEX|@FILE")]
    auditor_token: Option<String>,
    #[command(flatten)]
    witness: WitnessArgs,
}

#[derive(Args)]
struct WithdrawArgs {
    /// The study id.
    #[arg(long)]
    study: String,
    /// Only consider donations to this intake.
    #[arg(long, value_name = "URL")]
    intake: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    #[command(flatten)]
    witness: WitnessArgs,
}

/// A CLI failure: exit code and one line.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl From<MinimiseError> for Failure {
    fn from(e: MinimiseError) -> Self {
        match e {
            MinimiseError::Import(i) => fail(3, i.to_string()),
            e @ (MinimiseError::CprMismatch { .. } | MinimiseError::PatientNotFound { .. }) => {
                fail(4, e.to_string())
            }
            other => fail(3, other.to_string()),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Config(_) | ClientError::Tls(_) | ClientError::NoAuditorToken => 4,
            ClientError::Network { .. } => 5,
            ClientError::Problem { .. } => 6,
            ClientError::BadResponse { .. } => 5,
            _ => 7,
        };
        fail(code, e.to_string())
    }
}

impl From<DonationError> for Failure {
    fn from(e: DonationError) -> Self {
        let code = match &e {
            DonationError::UnknownPurpose { .. }
            | DonationError::UnknownLanguage { .. }
            | DonationError::BadPurposes
            | DonationError::BadExpiry { .. } => 4,
            DonationError::NoRows => 9,
            _ => 1,
        };
        fail(code, e.to_string())
    }
}

impl From<KeystoreError> for Failure {
    fn from(e: KeystoreError) -> Self {
        let code = match &e {
            KeystoreError::PassphraseRequired(_) | KeystoreError::WrongPassphrase(_) => 4,
            _ => 8,
        };
        fail(code, e.to_string())
    }
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Client(c) => c.into(),
            SessionError::Donation(d) => d.into(),
            SessionError::Minimise(m) => m.into(),
            SessionError::Inconsistent(_) | SessionError::StoredReceipt(_) => {
                fail(7, e.to_string())
            }
            SessionError::NotWitnessed { .. } | SessionError::Fork(_) | SessionError::Pin(_) => {
                fail(7, e.to_string())
            }
            other => fail(1, other.to_string()),
        }
    }
}

/// Render a study file error in one line naming the file, line and key.
fn study_file_error(path: &Path, e: &StudyError) -> Failure {
    let file = path.display();
    match e {
        StudyError::Toml(msg) => {
            // toml's message: "TOML parse error at line L, column C", "|", "L | source", "| ^", message.
            let lines: Vec<&str> = msg.lines().collect();
            let at = lines
                .first()
                .and_then(|l| l.strip_prefix("TOML parse error at "))
                .unwrap_or("");
            let source = lines
                .iter()
                .find_map(|l| l.split_once(" | ").map(|(_, s)| s.trim()))
                .filter(|s| !s.is_empty());
            let detail = lines
                .iter()
                .skip(1)
                .filter(|l| !l.trim_start().starts_with('|') && !l.contains(" | "))
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            match (at.is_empty(), source) {
                (false, Some(src)) => fail(3, format!("{file}: {at}: `{src}`: {detail}")),
                (false, None) => fail(3, format!("{file}: {at}: {detail}")),
                _ => fail(3, format!("{file}: {}", one_line(msg))),
            }
        }
        other => fail(3, format!("{file}: {}", one_line(&other.to_string()))),
    }
}

fn tls_trust(args: &TlsArgs) -> Result<TrustAnchors, Failure> {
    match (args.ca.as_slice(), args.dangerous_accept_invalid_certs) {
        (_, true) => Ok(TrustAnchors::DangerousAcceptInvalidCerts),
        (cas, false) if !cas.is_empty() => {
            let mut pem = Vec::new();
            for ca in cas {
                let b = std::fs::read(ca).map_err(|e| fail(3, format!("{}: {e}", ca.display())))?;
                pem.extend_from_slice(&b);
                pem.push(b'\n');
            }
            Ok(TrustAnchors::CaPem(pem))
        }
        (_, false) => Err(fail(
            4,
            "the intake's CA is required: pass --ca <PEM> (there is no platform trust store)",
        )),
    }
}

fn intake_for(url: &str, tls: &TlsArgs, auditor: Option<&str>) -> Result<Intake, Failure> {
    let mut config = IntakeConfig::new(url, tls_trust(tls)?);
    if let Some(k) = &tls.steward_key {
        config.steward_key = Some(
            PublicKey::from_base64(k.trim())
                .map_err(|_| fail(4, "--steward-key: not a base64 Ed25519 public key"))?,
        );
    }
    config.auditor_token = auditor.map(AuditorToken::new);
    Ok(Intake::new(config)?)
}

/// Where a study comes from.
enum StudySource {
    /// Parsed from a local file; `signed` when the file is the signed JSON form.
    File {
        definition: Box<StudyDefinition>,
        signed: Option<Box<PublishedStudy>>,
    },
    /// A URL `https://host/v1/studies/<id>`.
    Url { base: String, id: StudyId },
    /// A bare study id (donate only).
    Id(StudyId),
}

fn study_source(arg: &str, tls: &TlsArgs) -> Result<StudySource, Failure> {
    if let Some(rest) = arg.strip_prefix("https://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let id = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .and_then(|s| StudyId::new(s).ok())
            .ok_or_else(|| fail(4, format!("{arg}: expected https://host/v1/studies/<id>")))?;
        return Ok(StudySource::Url {
            base: format!("https://{host}"),
            id,
        });
    }
    let path = Path::new(arg);
    if !path.exists() {
        if let Ok(id) = StudyId::new(arg) {
            return Ok(StudySource::Id(id));
        }
        return Err(fail(3, format!("{arg}: study file not found")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(3, format!("{arg}: {e}")))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let trimmed = bytes.trim_ascii_end();
        let signed = SignedObject::from_bytes(trimmed)
            .map_err(|e| fail(3, format!("{arg}: {}", one_line(&e.to_string()))))?;
        let steward = match &tls.steward_key {
            Some(k) => Some(
                PublicKey::from_base64(k.trim())
                    .map_err(|_| fail(4, "--steward-key: not a base64 Ed25519 public key"))?,
            ),
            None => None,
        };
        let p = PublishedStudy::from_signed(signed, steward.as_ref())
            .map_err(|e| fail(7, format!("{arg}: {e}")))?;
        return Ok(StudySource::File {
            definition: Box::new(p.definition.clone()),
            signed: Some(Box::new(p)),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(3, format!("{arg}: not UTF-8")))?;
    let definition = StudyDefinition::from_toml(&text).map_err(|e| study_file_error(path, &e))?;
    Ok(StudySource::File {
        definition: Box::new(definition),
        signed: None,
    })
}

fn progress(msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {human_pos} items, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn check_inputs(inputs: &[PathBuf]) -> Result<(), Failure> {
    for p in inputs {
        if !p.exists() {
            return Err(fail(3, format!("{}: input file not found", p.display())));
        }
    }
    Ok(())
}

fn minimise(
    export: &ExportArgs,
    study: &StudyDefinition,
    cpr: Option<&Cpr>,
) -> Result<datadonor_client::MinimisedRows, Failure> {
    check_inputs(&export.inputs)?;
    let mut options = MinimiseOptions::default();
    if let Some(c) = cpr {
        options = options.with_cpr(c);
    }
    if let Some(p) = &export.patient {
        options = options.with_patient(p.clone());
    }
    if let Some(p) = &export.postcode {
        options = options.with_postcode(p.clone());
    }
    let pb = progress("importing");
    let paths: Vec<&Path> = export.inputs.iter().map(PathBuf::as_path).collect();
    let r = minimise_paths(&paths, study, options, &mut |n| pb.set_position(n));
    pb.finish_and_clear();
    Ok(r?)
}

/// A warning on stderr.
fn warn(message: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "datadonor: warning: {}",
        escape_controls(message)
    );
}

/// Whether the donor can be asked: stdin and stderr are a terminal.
fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks for a secret on the terminal without echoing it.
fn ask_secret(prompt: &str) -> Result<Zeroizing<String>, Failure> {
    let term = console::Term::stderr();
    if !term.is_term() {
        return Err(fail(4, "cannot ask without echo: stderr is not a terminal"));
    }
    term.write_str(prompt)
        .map_err(|e| fail(1, format!("the terminal: {e}")))?;
    term.read_secure_line()
        .map(Zeroizing::new)
        .map_err(|e| fail(1, format!("the terminal: {e}")))
}

/// Printed when the CPR number is given as a command-line value.
const CPR_VALUE_WARNING: &str = "--cpr with a value is visible to other users of this computer (in the process list) and kept in your shell history; use --cpr-file PATH or --cpr - (stdin), or leave it out to be asked";

/// The donor's CPR number: from --cpr-file, stdin (`--cpr -`), --cpr VALUE (with a warning), or
/// asked for without echo in a terminal. `None` when none is given and it is not `required`.
/// The number itself is never printed.
fn read_cpr(args: &CprArgs, required: bool) -> Result<Option<Cpr>, Failure> {
    let (text, source) = if let Some(path) = &args.cpr_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(3, format!("--cpr-file {}: {e}", path.display())))?;
        (
            Zeroizing::new(text),
            format!("--cpr-file {}", path.display()),
        )
    } else {
        match args.cpr.as_deref() {
            Some("-") if interactive() => (
                ask_secret("Your CPR number (not shown): ")?,
                "--cpr -".to_string(),
            ),
            Some("-") => {
                let mut line = Zeroizing::new(String::new());
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| fail(1, format!("--cpr -: stdin: {e}")))?;
                (line, "--cpr - (stdin)".to_string())
            }
            Some(value) => {
                warn(CPR_VALUE_WARNING);
                (Zeroizing::new(value.to_string()), "--cpr".to_string())
            }
            None if interactive() => {
                let prompt = if required {
                    "Your CPR number (not shown; it never leaves this device): "
                } else {
                    "Your CPR number (not shown; used only on this device; Enter to skip): "
                };
                let text = ask_secret(prompt)?;
                if !required && text.trim().is_empty() {
                    return Ok(None);
                }
                (text, "the CPR number entered".to_string())
            }
            None if required => {
                return Err(fail(
                    4,
                    "no CPR number: give --cpr-file PATH or --cpr - (read from stdin), or run in a terminal to be asked",
                ))
            }
            None => return Ok(None),
        }
    };
    Cpr::parse(text.trim())
        .map(Some)
        .map_err(|e| fail(4, format!("{}: {e}", escape_controls(&source))))
}

/// Checks --postcode: four digits and a Danish postcode.
fn check_postcode(export: &ExportArgs) -> Result<(), Failure> {
    let Some(p) = export.postcode.as_deref() else {
        return Ok(());
    };
    let shown = escape_controls(p);
    if !(p.len() == 4 && p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(fail(
            4,
            format!("--postcode {shown}: a Danish postcode is four digits, e.g. 5000"),
        ));
    }
    if municipality_of_postcode(p).is_none() {
        return Err(fail(
            4,
            format!("--postcode {shown}: not a Danish postcode"),
        ));
    }
    Ok(())
}

/// Text shown to the donor with every control character escaped, line by line (the preview
/// quotes the export and the study).
fn escaped_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(l) => format!("{}\n", escape_controls(l)),
            None => escape_controls(line).into_owned(),
        })
        .collect()
}

/// Why periods were dropped for want of a Danish postcode, and what to do, if any were.
fn postcode_hint(rows: &datadonor_client::MinimisedRows) -> Option<String> {
    let n = rows.report.count(DropReason::RowUnknownPostcode);
    (n > 0).then(|| {
        format!(
            "{n} period(s) dropped because the postcode is missing from the export or not Danish (Apple Health exports have none): give your Danish postcode with --postcode NNNN"
        )
    })
}

/// The error for an export that gives no row, with the postcode hint when that is why.
fn no_rows(rows: &datadonor_client::MinimisedRows) -> Failure {
    match postcode_hint(rows) {
        Some(hint) => fail(9, format!("nothing to donate: {hint}")),
        None => DonationError::NoRows.into(),
    }
}

/// How the donor key is to be opened or created.
enum KeyAccess {
    /// With this passphrase (--passphrase-file or DATADONOR_PASSPHRASE).
    Passphrase(Passphrase),
    /// Without a passphrase (--no-passphrase).
    Unprotected,
    /// Ask for the passphrase on the terminal.
    Ask,
}

/// Decided before anything else is done, so that a run that cannot open the key store fails
/// first.
fn key_access(args: &PassphraseArgs) -> Result<KeyAccess, Failure> {
    if args.no_passphrase {
        return Ok(KeyAccess::Unprotected);
    }
    match passphrase(args.passphrase_file.as_ref())? {
        Some(p) => Ok(KeyAccess::Passphrase(p)),
        None if interactive() => Ok(KeyAccess::Ask),
        None => Err(fail(
            4,
            "no passphrase for the key store: give --passphrase-file FILE or set DATADONOR_PASSPHRASE, or pass --no-passphrase for a donor key protected only by file permissions",
        )),
    }
}

/// Opens the donor key, or creates it: an unprotected key only with --no-passphrase (and a
/// warning), a new passphrase asked for twice.
fn donor_key(ks: &Keystore, access: KeyAccess) -> Result<SigningKey, Failure> {
    let path = ks.donor_key_path();
    let shown = path.display();
    match (access, ks.key_protection()?) {
        (KeyAccess::Unprotected, Some(KeyProtection::Passphrase)) => Err(fail(
            4,
            format!("{shown}: the donor key is protected by a passphrase; give it with --passphrase-file or DATADONOR_PASSPHRASE instead of --no-passphrase"),
        )),
        (KeyAccess::Unprotected, _) => {
            warn(&format!(
                "the donor key in {shown} is not protected by a passphrase (--no-passphrase): anyone who can read that file can sign donations and withdrawals as you"
            ));
            Ok(ks.donor_key(None)?)
        }
        (_, Some(KeyProtection::None)) => Err(fail(
            4,
            format!("{shown}: the donor key is stored without a passphrase; pass --no-passphrase to use it"),
        )),
        (KeyAccess::Passphrase(p), existing) => {
            if existing.is_none() && p.is_empty() {
                return Err(fail(4, "the key store passphrase is empty"));
            }
            Ok(ks.donor_key(Some(&p))?)
        }
        (KeyAccess::Ask, Some(KeyProtection::Passphrase)) => {
            let mut p = ask_secret("Key store passphrase: ")?;
            Ok(ks.donor_key(Some(&Passphrase::new(std::mem::take(&mut *p))))?)
        }
        (KeyAccess::Ask, None) => {
            let _ = writeln!(
                std::io::stderr(),
                "A new donor key is created in {shown}, protected by a passphrase you choose."
            );
            let mut first = ask_secret("New key store passphrase: ")?;
            if first.is_empty() {
                return Err(fail(4, "the key store passphrase is empty; nothing was created"));
            }
            let again = ask_secret("The same passphrase again: ")?;
            if *first != *again {
                return Err(fail(4, "the two passphrases differ; nothing was created"));
            }
            Ok(ks.donor_key(Some(&Passphrase::new(std::mem::take(&mut *first))))?)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("starting the runtime: {e}")))
}

fn passphrase(file: Option<&PathBuf>) -> Result<Option<Passphrase>, Failure> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|e| fail(3, format!("{}: {e}", f.display())))?;
        return Ok(Some(Passphrase::new(
            s.trim_end_matches(['\r', '\n']).to_string(),
        )));
    }
    Ok(std::env::var("DATADONOR_PASSPHRASE")
        .ok()
        .map(Passphrase::new))
}

fn keystore(cli_dir: Option<&PathBuf>) -> Result<Keystore, Failure> {
    Ok(Keystore::open(
        cli_dir.cloned().unwrap_or_else(Keystore::default_dir),
    )?)
}

/// The witness policy for `intake`: the --witness keys (pinned in the key store for the next
/// commands), else the ones pinned before, else none.
fn witness_policy(
    ks: &Keystore,
    intake: &str,
    args: &WitnessArgs,
) -> Result<Option<WitnessPolicy>, Failure> {
    if !args.witnesses.is_empty() {
        let quorum = args.witness_quorum.unwrap_or(args.witnesses.len());
        let policy = WitnessPolicy::from_vkeys(&args.witnesses, quorum)
            .map_err(|e| fail(4, format!("--witness: {e}")))?;
        ks.pin_witnesses(
            intake,
            &WitnessPin {
                witnesses: policy.vkeys(),
                quorum,
            },
        )?;
        return Ok(Some(policy));
    }
    match ks.pinned_witnesses(intake)? {
        Some(pin) => WitnessPolicy::from_vkeys(&pin.witnesses, pin.quorum)
            .map(Some)
            .map_err(|e| fail(8, format!("the pinned witnesses: {e}"))),
        None => Ok(None),
    }
}

fn cmd_preview(args: &PreviewArgs) -> Result<(), Failure> {
    check_postcode(&args.export)?;
    let cpr = read_cpr(&args.cpr, false)?;
    check_inputs(&args.export.inputs)?;
    let definition = match study_source(&args.export.study, &args.tls)? {
        StudySource::File { definition, .. } => *definition,
        StudySource::Url { base, id } => {
            let intake = intake_for(&base, &args.tls, None)?;
            runtime()?.block_on(intake.study(&id))?.definition
        }
        StudySource::Id(id) => {
            return Err(fail(
                3,
                format!("{id}: study file not found (preview needs a file or an https:// URL)"),
            ))
        }
    };
    let rows = minimise(&args.export, &definition, cpr.as_ref())?;
    let preview = Preview::new(&rows, None);
    let hint = postcode_hint(&rows);
    let out = if args.json {
        if let Some(h) = &hint {
            warn(h);
        }
        preview.to_json()
    } else {
        let mut table = escaped_lines(&preview.to_table());
        if let Some(h) = &hint {
            table.push_str(&format!("\nNote: {h}\n"));
        }
        table
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| fail(1, format!("stdout: {e}")))
}

fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            9,
            "not confirmed: stdin is not a terminal; pass --yes to donate without asking",
        ));
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(1, format!("stdin: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn cmd_donate(args: &DonateArgs, ks_dir: Option<&PathBuf>) -> Result<(), Failure> {
    check_postcode(&args.export)?;
    let key_access = key_access(&args.passphrase)?;
    let cpr = read_cpr(&args.cpr, true)?.ok_or_else(|| fail(4, "no CPR number given"))?;
    check_inputs(&args.export.inputs)?;
    let source = study_source(&args.export.study, &args.tls)?;
    let mut consent = ConsentChoice {
        purposes: args.purposes.clone(),
        expires_in_days: args.expires_days,
        language: args.language.clone(),
    };
    // The donor's choices are checked against a local study file before any request is made.
    // So is the export (including its CPR number against --cpr), with the local definition.
    let local_rows = match &source {
        StudySource::File { definition, .. } => {
            datadonor_client::donation::check_choice(definition, &consent)?;
            Some(minimise(&args.export, definition, Some(&cpr))?)
        }
        _ => None,
    };
    // Nothing to donate is known before any request when the study is a local file.
    if let Some(rows) = local_rows.as_ref().filter(|r| r.rows.is_empty()) {
        return Err(no_rows(rows));
    }
    let mut intake = intake_for(&args.intake, &args.tls, None)?;
    if let Some(c) = &args.credential {
        let text = match c.strip_prefix('@') {
            Some(p) => std::fs::read_to_string(p).map_err(|e| fail(3, format!("{p}: {e}")))?,
            None => c.clone(),
        };
        intake = intake.with_credential(DonorCredentialToken::new(&text));
    }
    let rt = runtime()?;
    let study = match source {
        StudySource::File {
            signed: Some(p), ..
        } => *p,
        StudySource::File {
            definition,
            signed: None,
        } => {
            let p = rt.block_on(intake.study(&definition.id))?;
            if p.definition != *definition {
                return Err(fail(
                    7,
                    format!(
                        "{}: differs from the study the intake publishes ({} v{})",
                        args.export.study, p.definition.id, p.definition.version
                    ),
                ));
            }
            p
        }
        StudySource::Url { id, .. } | StudySource::Id(id) => rt.block_on(intake.study(&id))?,
    };
    if consent.language.is_none() {
        consent.language = Some(notice_language(&study.definition).to_string());
    }
    datadonor_client::donation::check_choice(&study.definition, &consent)?;
    // A local file's definition is the one the intake publishes (checked above).
    let rows = match local_rows {
        Some(rows) => rows,
        None => minimise(&args.export, &study.definition, Some(&cpr))?,
    };
    if rows.rows.is_empty() {
        return Err(no_rows(&rows));
    }
    let preview = Preview::new(&rows, None);
    print!("{}", escaped_lines(&preview.to_table()));
    if let Some(h) = postcode_hint(&rows) {
        println!("\nNote: {h}");
    }
    println!(
        "Study signed by steward key {}; study SHA-256 {}",
        study.steward.to_base64(),
        hex::encode(study.sha256)
    );
    // The study and its bundle against what this device pinned on first use, before anything
    // is shown as the study's.
    let ks = keystore(ks_dir)?;
    let pinned = ks.pinned_ledger_key(intake.base_url())?;
    let session = rt.block_on(IntakeSession::connect(intake.clone(), pinned.as_ref()))?;
    let bundle = pin_bundle(&rt, &ks, &session, &study)?;
    // The consent notice itself, fetched by the hash the manifest will sign.
    let lang = consent.language.as_deref().unwrap_or("en");
    let texts = study.definition.texts_for(&[lang]);
    let notice = rt.block_on(intake.notice(&texts.notice_sha256))?;
    print!(
        "{}",
        consent_text(&study.definition, &texts, &notice, &consent)
    );
    if !args.yes && !confirm(&format!("Donate these {} rows?", rows.rows.len()))? {
        return Err(fail(9, "not confirmed: nothing was sent"));
    }
    let key = donor_key(&ks, key_access)?;
    let mut witnesses = witness_policy(&ks, intake.base_url(), &args.witness)?;
    if witnesses.is_none() {
        if let Some(b) = &bundle {
            witnesses = datadonor_client::pins::bundle_witness_policy(b)?;
        }
    }
    let outcome = rt.block_on(async {
        let session = session.with_witnesses(witnesses);
        if pinned.is_none() {
            ks.pin_ledger_key(intake.base_url(), &session.ledger().info)
                .map_err(|e| SessionError::StoredReceipt(e.to_string()))?;
        }
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.set_message("sealing and uploading");
        pb.enable_steady_tick(Duration::from_millis(120));
        let r = session.donate(&study, &rows, &cpr, &key, &consent).await;
        pb.finish_and_clear();
        r
    });
    let outcome = outcome.map_err(|e| keep_fork(&ks, e))?;
    let path = ks.store_receipt(&outcome.stored)?;
    if let Some(w) = &outcome.witnessed {
        ks.store_checkpoint(intake.base_url(), &w.note)?;
    }
    println!(
        "Pseudonym computed on this device from {} of {} pseudonymiser instances (instances {:?}); no instance saw your CPR number",
        outcome.pseudonymisers_used.len(),
        study
            .definition
            .pseudonymiser
            .as_ref()
            .map_or(0, |p| p.instances.len()),
        outcome.pseudonymisers_used
    );
    for r in &outcome.pseudonymisers_rejected {
        println!("warning: {r}");
    }
    println!(
        "Donated {} rows to {} at ledger index {}; receipt verified and stored in {}",
        rows.rows.len(),
        study.definition.id,
        outcome.receipt.receipt.ledger_index,
        path.display()
    );
    if let Some(w) = &outcome.witnessed {
        println!("{}", cosigned_line(w.checkpoint.size, &w.cosigned_by));
    }
    Ok(())
}

/// The notice language: `$LANG`'s (e.g. `da_DK.UTF-8` → `da`) when the study gives it, else the
/// study's own.
fn notice_language(def: &StudyDefinition) -> &str {
    let env = std::env::var("LANG").unwrap_or_default();
    let code = env.get(..2).unwrap_or("");
    def.languages()
        .find(|l| *l == code)
        .unwrap_or(def.language())
}

/// Text from elsewhere, printable: control characters other than newlines and tabs escaped.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What the donor consents to: the notice itself, the controller, each purpose's text (those
/// chosen marked), retention, expiry and how to withdraw.
fn consent_text(
    def: &StudyDefinition,
    texts: &datadonor_schemas::study::LocalizedTexts<'_>,
    notice: &str,
    consent: &ConsentChoice,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n===== Consent notice ({}, SHA-256 {}) =====\n",
        texts.language,
        hex::encode(texts.notice_sha256)
    ));
    out.push_str(&printable(notice));
    if !notice.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("===== end of notice =====\n");
    out.push_str(&format!("Study: {}\n", printable(texts.title)));
    out.push_str(&format!(
        "Data controller: {} ({})\n",
        printable(&def.controller.name),
        printable(&def.controller.contact)
    ));
    out.push_str("Purposes (you consent to those marked [x]):\n");
    for (code, text) in &texts.purposes {
        let mark = if consent.purposes.iter().any(|p| p == code) {
            "x"
        } else {
            " "
        };
        out.push_str(&format!("  [{mark}] {code}: {}\n", printable(text)));
    }
    out.push_str(&format!(
        "Your data is kept for {} days from donation; your consent lapses after {} days.\n",
        def.retention_days, consent.expires_in_days
    ));
    out.push_str(
        "You can withdraw at any time with `datadonor withdraw --study <id>`; rows already donated are then erased at the next compaction.\n",
    );
    out
}

/// Fetch the study's bundle and check it against the pin of this study (trust on first use of
/// the steward key); `None` when the intake serves no bundle for the study.
fn pin_bundle(
    rt: &tokio::runtime::Runtime,
    ks: &Keystore,
    session: &IntakeSession,
    study: &PublishedStudy,
) -> Result<Option<datadonor_schemas::bundle::OpenedBundle>, Failure> {
    use datadonor_client::pins::{pin_study, PinError, PinOutcome};
    use datadonor_schemas::time::Clock as _;
    let bundle = match rt.block_on(session.intake().study_bundle(study, session.ledger())) {
        Ok(b) => b,
        Err(ClientError::Problem { status: 404, .. }) => {
            eprintln!(
                "warning: the intake publishes no signed bundle for study {}: the ledger key and witnesses are trusted as first seen",
                study.definition.id
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let now = datadonor_schemas::time::SystemClock.now();
    match pin_study(ks, session.intake().base_url(), study, &bundle, now) {
        Ok(PinOutcome::First) => eprintln!(
            "Pinned study {} on first use: steward key {}",
            study.definition.id,
            study.steward.to_base64()
        ),
        Ok(PinOutcome::Updated) => eprintln!(
            "Study {}: a new bundle signed by the pinned steward key replaces the pinned one",
            study.definition.id
        ),
        Ok(PinOutcome::Unchanged) => {}
        Err(e @ PinError::StewardChanged { .. }) => return Err(fail(7, e.to_string())),
        Err(PinError::Keystore(k)) => return Err(k.into()),
        Err(e) => return Err(fail(1, e.to_string())),
    }
    Ok(Some(bundle))
}

/// The witnesses of the bundle pinned for a study at an intake (none pinned, or none named:
/// `None`).
fn pinned_bundle_policy(
    ks: &Keystore,
    intake: &str,
    study: &str,
) -> Result<Option<WitnessPolicy>, Failure> {
    let Ok(id) = StudyId::new(study) else {
        return Ok(None);
    };
    let Some(pin) = datadonor_client::pins::pinned_study(ks, intake, &id)? else {
        return Ok(None);
    };
    let bundle = datadonor_schemas::bundle::StudyBundle::open(&pin.bundle, Some(&pin.steward_key))
        .map_err(|e| fail(8, format!("the pinned bundle of study {id}: {e}")))?;
    Ok(datadonor_client::pins::bundle_witness_policy(&bundle)?)
}

/// A fork is kept as evidence in the key store (`forks/<time>.json`): both signed checkpoints
/// and the proof served; the command fails.
fn keep_fork(ks: &Keystore, e: SessionError) -> Failure {
    use datadonor_schemas::time::Clock as _;
    match e {
        SessionError::Fork(evidence) => {
            let now = datadonor_schemas::time::SystemClock.now();
            let dir = ks.dir().join("forks");
            let mut path = dir.join(format!("{now}.json"));
            let written = std::fs::create_dir_all(&dir).and_then(|()| {
                let mut n = 0;
                while path.exists() {
                    n += 1;
                    path = dir.join(format!("{now}-{n}.json"));
                }
                std::fs::write(
                    &path,
                    serde_json::to_vec_pretty(&*evidence).unwrap_or_default(),
                )
            });
            match written {
                Ok(()) => fail(
                    7,
                    format!(
                        "the intake's ledger forked: {}; both signed checkpoints are kept as evidence in {}",
                        evidence.reason,
                        path.display()
                    ),
                ),
                Err(k) => fail(
                    8,
                    format!(
                        "the intake's ledger forked: {}; storing the evidence failed: {k}",
                        evidence.reason
                    ),
                ),
            }
        }
        SessionError::NotWitnessed { stored, reason }
            if matches!(*reason, SessionError::Fork(_)) =>
        {
            // The receipt is kept too: it is part of what the intake showed.
            let _ = ks.store_receipt(&stored);
            keep_fork(ks, *reason)
        }
        other => keep_unwitnessed(ks, other),
    }
}

/// A receipt the intake gave but no cosigned checkpoint could be tied to is stored all the
/// same, so that `datadonor verify` can check it later; the command still fails.
fn keep_unwitnessed(ks: &Keystore, e: SessionError) -> Failure {
    match e {
        SessionError::NotWitnessed { stored, reason } => match ks.store_receipt(&stored) {
            Ok(path) => fail(
                7,
                format!(
                    "receipt at ledger index {} not accepted: {reason}; it is stored in {}, check it later with `datadonor verify`",
                    stored.ledger_index,
                    path.display()
                ),
            ),
            Err(k) => fail(
                8,
                format!("receipt not accepted: {reason}; storing it failed: {k}"),
            ),
        },
        other => other.into(),
    }
}

/// The line saying which witnesses cosigned the checkpoint of `size` entries.
fn cosigned_line(size: u64, names: &[String]) -> String {
    format!(
        "Checkpoint of {size} entries cosigned by {} required witnesses ({})",
        names.len(),
        names.join(", ")
    )
}

fn cmd_receipts(ks_dir: Option<&PathBuf>) -> Result<(), Failure> {
    let ks = keystore(ks_dir)?;
    let list = ks.receipts()?;
    if list.is_empty() {
        println!("no receipts stored in {}", ks.dir().display());
    }
    for (path, r) in list {
        println!(
            "{:?}\t{}\tindex {}\t{}\t{}",
            r.kind,
            r.study_id,
            r.ledger_index,
            r.intake,
            path.display()
        );
    }
    Ok(())
}

/// A secret given on the command line: the value itself, or `@FILE` to read it (trimmed) from a file.
fn secret_arg(value: &str) -> Result<String, Failure> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| fail(3, format!("{path}: {e}"))),
        None => Ok(value.to_string()),
    }
}

fn cmd_verify(args: &VerifyArgs, ks_dir: Option<&PathBuf>) -> Result<(), Failure> {
    let ks = keystore(ks_dir)?;
    let stored = read_receipt(&args.receipt).map_err(|e| fail(3, e.to_string()))?;
    let auditor_token = args.auditor_token.as_deref().map(secret_arg).transpose()?;
    let pinned = ks.pinned_ledger_key(&stored.intake)?;
    let witnesses = match witness_policy(&ks, &stored.intake, &args.witness)? {
        Some(w) => Some(w),
        None => pinned_bundle_policy(&ks, &stored.intake, &stored.study_id)?,
    };
    let online = !args.tls.ca.is_empty() || args.tls.dangerous_accept_invalid_certs;
    // With witnesses required, the receipt is checked against a cosigned current checkpoint:
    // there is no offline verification.
    if !online && witnesses.is_none() {
        if let Some(pin) = &pinned {
            // Offline: the receipt against its own checkpoint and the ledger key pinned on first use.
            let trust = LedgerTrust::from_info(pin)
                .map_err(|e| fail(8, format!("the pinned ledger key: {e}")))?;
            let receipt = trust.verify(&stored.bundle)?;
            println!(
                "receipt verified against its own checkpoint only (tree of {} entries); pass --ca to check it against the intake's current checkpoint",
                receipt.tree_size
            );
            return Ok(());
        }
    }
    let intake = intake_for(&stored.intake, &args.tls, auditor_token.as_deref())?;
    let last = ks.last_checkpoint(&stored.intake)?;
    let rt = runtime()?;
    let outcome = rt
        .block_on(async {
            let session = IntakeSession::connect(intake, pinned.as_ref())
                .await?
                .with_witnesses(witnesses);
            session.verify(&stored, last.as_deref()).await
        })
        .map_err(|e| keep_fork(&ks, e))?;
    match outcome.current {
        Some((size, note)) => {
            ks.store_checkpoint(&stored.intake, &note)?;
            println!(
                "receipt verified: entry {} is in the intake's current tree of {} entries, which is consistent with every checkpoint verified before",
                outcome.receipt.receipt.ledger_index, size
            );
            if !outcome.cosigned_by.is_empty() {
                println!("{}", cosigned_line(size, &outcome.cosigned_by));
            }
        }
        None => println!(
            "receipt verified against its own checkpoint only (tree of {} entries)",
            outcome.receipt.tree_size
        ),
    }
    Ok(())
}

fn cmd_withdraw(args: &WithdrawArgs, ks_dir: Option<&PathBuf>) -> Result<(), Failure> {
    let key_access = key_access(&args.passphrase)?;
    let ks = keystore(ks_dir)?;
    let donation = ks.latest_donation(&args.study, args.intake.as_deref())?;
    let key = donor_key(&ks, key_access)?;
    let intake = intake_for(&donation.intake, &args.tls, None)?;
    let pinned = ks.pinned_ledger_key(&donation.intake)?;
    let witnesses = match witness_policy(&ks, &donation.intake, &args.witness)? {
        Some(w) => Some(w),
        None => pinned_bundle_policy(&ks, &donation.intake, &donation.study_id)?,
    };
    let rt = runtime()?;
    let (receipt, stored) = rt
        .block_on(async {
            let session = IntakeSession::connect(intake, pinned.as_ref())
                .await?
                .with_witnesses(witnesses);
            session.withdraw(&donation, &key).await
        })
        .map_err(|e| keep_unwitnessed(&ks, e))?;
    let path = ks.store_receipt(&stored)?;
    println!(
        "Consent withdrawn for study {} at ledger index {}; receipt verified and stored in {}",
        args.study,
        receipt.receipt.ledger_index,
        path.display()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ks = cli.keystore.as_ref();
    let result = match &cli.command {
        Command::Preview(a) => cmd_preview(a),
        Command::Donate(a) => cmd_donate(a, ks),
        Command::Receipts => cmd_receipts(ks),
        Command::Verify(a) => cmd_verify(a, ks),
        Command::Withdraw(a) => cmd_withdraw(a, ks),
        Command::App(a) => cmd_app(a, ks),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            // Messages may quote the export, the study or a server: no control character reaches
            // the terminal.
            let _ = writeln!(
                std::io::stderr(),
                "datadonor: error: {}",
                escape_controls(&one_line(&f.message))
            );
            std::process::ExitCode::from(f.code)
        }
    }
}
