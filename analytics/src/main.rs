//! The `datadonor-analytics` command line: a thin layer over the `datadonor_analytics` library.
//!
//! Exit status: 0 success, 1 error, 2 usage error, 3 refused (the spec, approval or study does
//! not allow the run, or a receipt does not check out), 4 an audit found violations (including a
//! ledger that is not append-only or does not match its signed checkpoint, or a checkpoint
//! without the witness quorum `audit log --witness` requires). Errors are
//! one line on stderr.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand};
use datadonor_analytics::audit;
use datadonor_analytics::compact::{compact, CompactOptions};
use datadonor_analytics::keys::{generate_steward_key, load_approvers, load_steward_key};
use datadonor_analytics::ledger::VerifiedLedger;
use datadonor_analytics::ledger::{
    verify_ledger_with, LedgerError, LedgerIndex, LedgerSink, LedgerSource, LocalLedgerFile,
};
use datadonor_analytics::ledger_http::HttpLedger;
use datadonor_analytics::query::{load_spec, open_study};
use datadonor_analytics::service::{self, QueryService, Researchers, ServiceParts};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::vault::VaultKey;
use datadonor_analytics::AnalyticsError;
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::cosignature::WitnessKey;
use datadonor_schemas::query::QueryApproval;
use datadonor_schemas::signing::{Context, PublicKey, SignedObject};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::{Clock, SystemClock};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "datadonor-analytics",
    version,
    about = "Datadonor analytics: approved, consent-aware aggregate queries over sealed batches"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a steward (approver) Ed25519 key: the seed file (0600) and `<out>.pub`.
    Keygen {
        /// Seed file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate a vault HPKE key: the key file (0600) and `<out>.pub` for the intake.
    VaultKeygen {
        /// Key file to create.
        #[arg(long)]
        out: PathBuf,
        /// Key id written into batch headers.
        #[arg(long, default_value_t = 1)]
        key_id: u32,
    },
    /// Study definitions.
    Study {
        #[command(subcommand)]
        cmd: StudyCmd,
    },
    /// Sign an approval of a query spec.
    Approve {
        /// The spec (TOML).
        #[arg(long)]
        spec: PathBuf,
        /// Steward key file: the Ed25519 seed as 64 hex digits, as `keygen` (or the intake's
        /// `init`, for its demo steward) writes it.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Researcher allowed to run it (must be the spec's).
        #[arg(long)]
        researcher: String,
        /// Days of validity from now.
        #[arg(long)]
        valid_days: u32,
        /// Runs allowed.
        #[arg(long)]
        max_runs: u32,
        /// Signed study to validate the spec against: FILE or ID, but it must be the signed
        /// study file (JSON, as `study sign` writes it); an id alone is refused.
        #[arg(long, value_name = "FILE or ID")]
        study: Option<String>,
        /// Privacy budget one run spends: ε (the study's [privacy] budgets are charged with it).
        #[arg(long)]
        epsilon: f64,
        /// Privacy budget one run spends: δ (above 0: the set of released cells is chosen
        /// above a noisy threshold).
        #[arg(long, default_value_t = 1e-7)]
        delta: f64,
        /// Approval file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve researchers' approved queries over HTTPS (the steward's query service): the only
    /// process that opens batches; every released value is differentially private and charged
    /// to the study's and the researcher's budgets.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8444")]
        listen: std::net::SocketAddr,
        /// TLS certificate chain (PEM).
        #[arg(long, value_name = "FILE")]
        tls_cert: PathBuf,
        /// TLS private key (PEM).
        #[arg(long, value_name = "FILE")]
        tls_key: PathBuf,
        /// The signed study: FILE or ID, but it must be the signed study file (JSON, as
        /// `study sign` writes it); an id alone is refused.
        #[arg(long, value_name = "FILE or ID")]
        study: String,
        /// The study's batches: the intake's directory `batches/<study>/`, or
        /// `s3://bucket/<prefix>/<study>` when the intake writes to a bucket (endpoint, region
        /// and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY).
        #[arg(long, value_name = "DIR or s3://BUCKET/PREFIX")]
        batches: String,
        /// Vault key file.
        #[arg(long)]
        vault_key: PathBuf,
        /// Approvers file of the trusted approver keys: one base64 Ed25519 public key per line
        /// (`#` comments; `cat steward.key.pub >> approvers` adds a steward).
        #[arg(long, value_name = "FILE")]
        approvers: PathBuf,
        /// Researchers file: one `name base64-public-key` line per registered researcher
        /// (`datadonor-research keygen` prints the line).
        #[arg(long, value_name = "FILE")]
        researchers: PathBuf,
        /// Intake base URL (https://...): the ledger is read from it and verified.
        #[arg(long)]
        ledger: String,
        /// Auditor bearer token (or @FILE).
        #[arg(long)]
        auditor_token: String,
        /// Analytics bearer token for POST /v1/ledger/events (or @FILE).
        #[arg(long)]
        analytics_token: String,
        /// CA certificate(s) of the intake (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// File holding the ledger's signed-note verifier key (vkey); pinned on first use
        /// in the state directory when absent.
        #[arg(long)]
        ledger_vkey: Option<PathBuf>,
        /// Directory keeping the last verified checkpoint and the journal of reserved runs.
        #[arg(long, default_value = ".datadonor-query-service")]
        state_dir: PathBuf,
    },
    /// Rewrite sealed batches without the rows of withdrawn consent records and log the erasures.
    Compact {
        /// The study's batches: the intake's directory `batches/<study>/`, or
        /// `s3://bucket/<prefix>/<study>` when the intake writes to a bucket (endpoint, region
        /// and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY).
        #[arg(long, value_name = "DIR or s3://BUCKET/PREFIX")]
        batches: String,
        /// Vault key file.
        #[arg(long)]
        vault_key: PathBuf,
        /// Only this study (default: every study in the directory): FILE or ID, a signed study
        /// file (its id is read from it) or a study id.
        #[arg(long, visible_alias = "study-id", value_name = "FILE or ID")]
        study: Option<String>,
        /// Rows per rewritten batch.
        #[arg(long, default_value_t = 1_000_000)]
        target_rows: usize,
        /// In a bucket: first delete what an interrupted compaction wrote before it had
        /// written all its new batches (its journal blocks compaction until then). Only when no
        /// other compaction of these batches is running.
        #[arg(long)]
        abandon_interrupted: bool,
        /// Analytics bearer token for POST /v1/ledger/events (or @FILE): the erasures are
        /// logged with it.
        #[arg(long, requires = "ledger")]
        analytics_token: Option<String>,
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Auditor's checks of the ledger, receipts, consents, query runs and sealed batches.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the signed tree head against the last verified one (kept in --state-dir) and
    /// the entries; store it; print size, root and entries by type.
    Log {
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Also write a self-contained HTML report.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Verify a receipt (bundle JSON or the donor client's stored receipt) and that its entry
    /// is in the current log.
    Receipt {
        /// The receipt file.
        file: PathBuf,
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// The consent timeline per pseudonym of a study, and totals.
    Consents {
        /// The study: FILE or ID, a signed study file (its id is read from it) or a study id.
        #[arg(long, visible_alias = "study-id", value_name = "FILE or ID")]
        study: String,
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Also write a self-contained HTML report.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Every query run; with --approvals, flag runs not covered by an approval.
    Queries {
        /// Directory of signed approval files.
        #[arg(long)]
        approvals: Option<PathBuf>,
        /// Only accept approvals signed by these trusted approver keys: an approvers file, one
        /// base64 Ed25519 public key per line.
        #[arg(long, requires = "approvals", value_name = "FILE")]
        approvers: Option<PathBuf>,
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Also write a self-contained HTML report.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Check every row of every sealed batch against the consent record it was donated under.
    Batches {
        /// The study's batches: the intake's directory `batches/<study>/`, or
        /// `s3://bucket/<prefix>/<study>` when the intake writes to a bucket (endpoint, region
        /// and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY).
        #[arg(long, value_name = "DIR or s3://BUCKET/PREFIX")]
        batches: String,
        /// Vault key file.
        #[arg(long)]
        vault_key: PathBuf,
        /// The study: FILE or ID, a signed study file (its id is read from it) or a study id.
        #[arg(long, visible_alias = "study-id", value_name = "FILE or ID")]
        study: String,
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Also write a self-contained HTML report.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StudyCmd {
    /// Sign a study definition (TOML) into its signed JSON form.
    Sign {
        /// Study TOML.
        #[arg(long)]
        study: PathBuf,
        /// Steward key file: the Ed25519 seed as 64 hex digits, as `keygen` writes it.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Signed study to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign the study bundle donors pin: the signed study's digest, the ledger's verifier key
    /// and the witnesses (with their quorum) a donor must require. Written into the intake's
    /// `studies/bundles/`.
    Bundle {
        /// The signed study (JSON, as `study sign` writes it).
        #[arg(long)]
        study: PathBuf,
        /// The ledger's signed-note verifier key (`GET /v1/ledger-key`, `vkey`).
        #[arg(long, value_name = "VKEY")]
        ledger_vkey: String,
        /// A witness's verifier key (repeatable).
        #[arg(long = "witness", value_name = "VKEY")]
        witnesses: Vec<String>,
        /// How many of the witnesses must cosign (default: all of them).
        #[arg(long)]
        witness_quorum: Option<u32>,
        /// Steward key file: the key that signed the study.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Signed bundle to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct LedgerArgs {
    /// Intake base URL (https://...).
    #[arg(long, conflicts_with = "ledger_file")]
    ledger: Option<String>,
    /// Auditor bearer token (or @FILE).
    #[arg(long, requires = "ledger")]
    auditor_token: Option<String>,
    /// Analytics bearer token for POST /v1/ledger/events: set from the commands that append
    /// (`compact`'s own `--analytics-token`), not offered by the read-only ones.
    #[arg(skip)]
    analytics_token: Option<String>,
    /// CA certificate(s) of the intake (PEM).
    #[arg(long, requires = "ledger")]
    ca: Option<PathBuf>,
    /// The intake's ledger file (embedded setup).
    #[arg(long)]
    ledger_file: Option<PathBuf>,
    /// Signed checkpoint file for --ledger-file.
    #[arg(long, requires = "ledger_file")]
    ledger_checkpoint: Option<PathBuf>,
    /// File holding the ledger's signed-note verifier key (vkey).
    #[arg(long)]
    ledger_vkey: Option<PathBuf>,
    /// Directory keeping the last verified checkpoint.
    #[arg(long, default_value = ".datadonor-analytics")]
    state_dir: PathBuf,
    /// A witness whose cosignature every checkpoint accepted must carry, as its verifier key
    /// `<name>+<key ID>+<base64>` (repeatable). The checkpoint is fetched again for up to 10
    /// seconds while it lacks the quorum; then the command fails (exit 4). Without it, the
    /// ledger's signature alone is checked.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// How many of the --witness keys must have cosigned the checkpoint (default: all).
    #[arg(long, value_name = "N", requires = "witnesses")]
    witness_quorum: Option<usize>,
    /// Override the clock (Unix seconds; for tests).
    #[arg(long, hide = true)]
    now: Option<i64>,
}

fn token(arg: &Option<String>, what: &str) -> anyhow::Result<Zeroizing<String>> {
    let t = arg
        .as_ref()
        .ok_or_else(|| anyhow!("--{what} is required with --ledger"))?;
    Ok(match t.strip_prefix('@') {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {f}"))?
                .trim()
                .to_string(),
        ),
        None => Zeroizing::new(t.clone()),
    })
}

fn read_vkey(path: &Path) -> anyhow::Result<NoteVerifier> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    NoteVerifier::parse_vkey(text.trim()).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The intake's ledger over HTTPS and its checkpoint verifier (pinned on first use in the
/// state directory unless --ledger-vkey is given).
fn http_ledger(args: &LedgerArgs, need_sink: bool) -> anyhow::Result<(HttpLedger, NoteVerifier)> {
    let url = args
        .ledger
        .as_ref()
        .ok_or_else(|| anyhow!("--ledger URL is required"))?;
    let ca = args
        .ca
        .as_ref()
        .ok_or_else(|| anyhow!("--ca is required with --ledger"))?;
    let auditor = token(&args.auditor_token, "auditor-token")?;
    let analytics = if need_sink {
        Some(token(&args.analytics_token, "analytics-token")?)
    } else {
        None
    };
    let http = HttpLedger::with_ca_file(url, auditor, analytics, ca)?;
    let verifier = match &args.ledger_vkey {
        Some(p) => read_vkey(p)?,
        None => {
            // Trust on first use, pinned in the state directory.
            let pinned = args.state_dir.join("ledger.vkey");
            let served = NoteVerifier::parse_vkey(&http.ledger_key()?.vkey)
                .map_err(|e| anyhow!("ledger key served by {url}: {e}"))?;
            match std::fs::read_to_string(&pinned) {
                Ok(p) if p.trim() != served.to_vkey() => {
                    return Err(anyhow!(
                        "ledger key changed since it was pinned in {}",
                        pinned.display()
                    ))
                }
                Ok(_) => {}
                Err(_) => {
                    std::fs::create_dir_all(&args.state_dir)?;
                    std::fs::write(&pinned, format!("{}\n", served.to_vkey()))?;
                }
            }
            served
        }
    };
    Ok((http, verifier))
}

/// The verified ledger the arguments name, folded as it streams, keeping no entry (what
/// compaction needs).
fn open_index(
    args: &LedgerArgs,
    need_sink: bool,
) -> anyhow::Result<(LedgerIndex, Box<dyn LedgerSink>)> {
    let mut sink = None;
    let index = LedgerIndex::fold(|each| {
        let (size, s) = stream_ledger(args, need_sink, each)?;
        sink = Some(s);
        Ok::<_, anyhow::Error>(size)
    })?;
    Ok((index, sink.ok_or_else(|| anyhow!("no ledger"))?))
}

/// Read and verify the ledger the arguments name, handing each entry to `each` with whether a
/// verified checkpoint covers it; the checkpoint's size (none for an unverified file).
fn stream_ledger(
    args: &LedgerArgs,
    need_sink: bool,
    each: &mut dyn FnMut(datadonor_schemas::ledger::LedgerEntry, bool),
) -> anyhow::Result<(Option<u64>, Box<dyn LedgerSink>)> {
    if args.ledger.is_some() {
        let (mut http, verifier) = http_ledger(args, need_sink)?;
        http.set_verifiers(vec![verifier.clone()]);
        // A log that is not what it signed, or lacks the witness quorum, is an audit finding.
        let size = match required_witnesses(args)? {
            Some(req) => {
                audit::verify_witnessed_with(&http, &[verifier], Some(&args.state_dir), &req, each)
            }
            None => verify_ledger_with(&http, &[verifier], Some(&args.state_dir), each),
        }
        .map_err(AnalyticsError::from)?;
        return Ok((Some(size), Box::new(http)));
    }
    let path = args
        .ledger_file
        .as_ref()
        .ok_or_else(|| anyhow!("one of --ledger URL or --ledger-file PATH is required"))?;
    let file = LocalLedgerFile::new(path, args.ledger_checkpoint.as_deref());
    let size = match (&args.ledger_checkpoint, &args.ledger_vkey) {
        (Some(_), Some(vk)) => Some(
            match required_witnesses(args)? {
                Some(req) => audit::verify_witnessed_with(
                    &file,
                    &[read_vkey(vk)?],
                    Some(&args.state_dir),
                    &req,
                    each,
                ),
                None => verify_ledger_with(&file, &[read_vkey(vk)?], Some(&args.state_dir), each),
            }
            .map_err(AnalyticsError::from)?,
        ),
        (None, _) if !args.witnesses.is_empty() => {
            return Err(anyhow!(
                "--witness needs a signed checkpoint: --ledger-checkpoint and --ledger-vkey"
            ))
        }
        (Some(_), None) => return Err(anyhow!("--ledger-checkpoint needs --ledger-vkey")),
        _ => {
            eprintln!(
                "datadonor-analytics: warning: {} is not checked against a signed checkpoint",
                path.display()
            );
            datadonor_analytics::ledger::stream_entries(&file, 0, &mut |e| each(e, true))?;
            None
        }
    };
    Ok((size, Box::new(file)))
}

/// The ledger as a source to audit, its checkpoint verifier, and the key that signs receipts.
/// A local ledger file needs --ledger-checkpoint and --ledger-vkey. The witness quorum is not
/// applied here: `audit log` checks it itself (and reports who cosigned), the other commands
/// wrap the source with [`witnessed`].
fn audit_source(
    args: &LedgerArgs,
) -> anyhow::Result<(Box<dyn LedgerSource>, NoteVerifier, PublicKey)> {
    if args.ledger.is_some() {
        let (http, verifier) = http_ledger(args, false)?;
        let key = match &args.ledger_vkey {
            Some(_) => PublicKey(*verifier.public_key()),
            None => PublicKey::from_base64(&http.ledger_key()?.public_key)
                .map_err(|e| anyhow!("ledger key: {e}"))?,
        };
        return Ok((Box::new(http), verifier, key));
    }
    let path = args
        .ledger_file
        .as_ref()
        .ok_or_else(|| anyhow!("one of --ledger URL or --ledger-file PATH is required"))?;
    let (Some(cp), Some(vk)) = (&args.ledger_checkpoint, &args.ledger_vkey) else {
        return Err(anyhow!(
            "auditing --ledger-file needs --ledger-checkpoint and --ledger-vkey"
        ));
    };
    let verifier = read_vkey(vk)?;
    let key = PublicKey(*verifier.public_key());
    Ok((
        Box::new(LocalLedgerFile::new(path, Some(cp))),
        verifier,
        key,
    ))
}

/// The witnesses --witness and --witness-quorum require on every checkpoint; none without them.
fn required_witnesses(args: &LedgerArgs) -> anyhow::Result<Option<audit::WitnessRequirement>> {
    witness_requirement(&args.witnesses, args.witness_quorum, args.now)
}

/// `source`, its checkpoints required to carry the witness quorum when --witness is given.
fn witnessed(
    source: Box<dyn LedgerSource>,
    verifier: &NoteVerifier,
    args: &LedgerArgs,
) -> anyhow::Result<Box<dyn LedgerSource>> {
    Ok(match required_witnesses(args)? {
        Some(req) => Box::new(audit::WitnessedSource::new(
            source,
            vec![verifier.clone()],
            req,
        )),
        None => source,
    })
}

/// What `--study FILE or ID` names: an existing file is a signed study file; otherwise the
/// value must be a study id.
enum StudyArg {
    File(PathBuf),
    Id(StudyId),
}

fn study_arg(s: &str) -> anyhow::Result<StudyArg> {
    let path = Path::new(s);
    if path.is_file() {
        return Ok(StudyArg::File(path.to_path_buf()));
    }
    match StudyId::new(s) {
        Ok(id) => Ok(StudyArg::Id(id)),
        Err(e) => Err(anyhow!(
            "--study {s:?} is neither a signed study file (no such file) nor a study id ({e})"
        )),
    }
}

/// The study id of `--study FILE or ID`: a study id as given, or the id in a signed study file
/// (its signature checked, but not whose it is: the commands taking an id trust no steward).
fn study_id(s: &str) -> anyhow::Result<StudyId> {
    match study_arg(s)? {
        StudyArg::Id(id) => Ok(id),
        StudyArg::File(path) => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let refused = |e: String| AnalyticsError::Refused(format!("{}: {e}", path.display()));
            let obj = SignedObject::from_bytes(&bytes).map_err(|e| refused(e.to_string()))?;
            let signed = obj
                .open::<StudyDefinition>(Context::StudyDefinition, "study definition")
                .map_err(|e| refused(e.to_string()))?;
            Ok(signed.body.id)
        }
    }
}

/// The signed study file of `--study FILE or ID`, for the commands that need the whole
/// definition.
fn study_file(s: &str, command: &str) -> anyhow::Result<Vec<u8>> {
    match study_arg(s)? {
        StudyArg::File(path) => {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        }
        StudyArg::Id(id) => Err(anyhow!(
            "{command} --study needs the signed study file (JSON, as `study sign` writes it): \
             {:?} is a study id, and no such file exists",
            id.as_str()
        )),
    }
}

fn html_out(path: Option<&PathBuf>, html: impl FnOnce() -> String) -> anyhow::Result<()> {
    if let Some(p) = path {
        audit::write_html(p, &html())?;
        eprintln!("HTML report written to {}", p.display());
    }
    Ok(())
}

/// The witnesses `audit log` requires: `quorum` (default: all) of the `vkeys`; none without them.
fn witness_requirement(
    vkeys: &[String],
    quorum: Option<usize>,
    now: Option<i64>,
) -> anyhow::Result<Option<audit::WitnessRequirement>> {
    if vkeys.is_empty() {
        return Ok(None);
    }
    let witnesses = vkeys
        .iter()
        .map(|v| WitnessKey::parse_vkey(v.trim()).map_err(|e| anyhow!("--witness {v:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quorum = quorum.unwrap_or(witnesses.len());
    if quorum == 0 || quorum > witnesses.len() {
        return Err(anyhow!(
            "--witness-quorum {quorum} cannot be met by {} witnesses",
            witnesses.len()
        ));
    }
    let now = now.unwrap_or_else(|| SystemClock.now());
    Ok(Some(audit::WitnessRequirement {
        witnesses,
        quorum,
        max_time: u64::try_from(now)
            .unwrap_or(0)
            .saturating_add(WITNESS_MAX_SKEW_SECS),
        max_wait: WITNESS_WAIT,
    }))
}

/// Latest cosignature timestamp `audit log` accepts, after the auditor's clock (seconds).
const WITNESS_MAX_SKEW_SECS: u64 = 300;
/// How long `audit log` waits for the checkpoint to carry the witness quorum.
const WITNESS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn run_audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Log { ledger, html } => {
            let required = required_witnesses(&ledger)?;
            let (source, verifier, _) = audit_source(&ledger)?;
            let report = audit::audit_log_witnessed(
                source.as_ref(),
                &[verifier],
                &ledger.state_dir,
                required.as_ref(),
            )?;
            print!("{}", report.render_text());
            html_out(html.as_ref(), || report.to_html())?;
        }
        AuditCmd::Receipt { file, ledger } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let bundle = audit::parse_receipt_file(&bytes, &file)?;
            let (source, verifier, key) = audit_source(&ledger)?;
            let source = witnessed(source, &verifier, &ledger)?;
            let report = audit::audit_receipt(
                &bundle,
                &key,
                &verifier,
                source.as_ref(),
                Some(&ledger.state_dir),
            )?;
            print!("{}", report.render_text());
        }
        AuditCmd::Consents {
            study,
            ledger,
            html,
        } => {
            let study = study_id(&study)?;
            // Streamed: one timeline per pseudonym of the study is kept, not the entries.
            let mut fold = audit::ConsentFold::new(&study);
            stream_ledger(&ledger, false, &mut |e, verified| fold.add(&e, verified))?;
            let report = fold.finish();
            print!("{}", report.render_text());
            html_out(html.as_ref(), || report.to_html())?;
        }
        AuditCmd::Queries {
            approvals,
            approvers,
            ledger,
            html,
        } => {
            let trusted = approvers.as_deref().map(load_approvers).transpose()?;
            let approvals = approvals
                .as_deref()
                .map(|d| audit::load_approvals(d, trusted.as_deref()))
                .transpose()?;
            // Streamed: only the query runs are kept, with their place in the log.
            let mut runs = Vec::new();
            let mut index = 0u64;
            stream_ledger(&ledger, false, &mut |e, _| {
                if matches!(e, datadonor_schemas::ledger::LedgerEntry::QueryRun { .. }) {
                    runs.push((index, e));
                }
                index += 1;
            })?;
            let report =
                audit::audit_query_runs(runs.iter().map(|(i, e)| (*i, e)), approvals.as_deref());
            print!("{}", report.render_text());
            html_out(html.as_ref(), || report.to_html())?;
            if report.flagged() > 0 {
                return Err(AnalyticsError::AuditFailed(format!(
                    "{} flagged",
                    audit::plural(report.flagged() as u64, "query run", "query runs")
                ))
                .into());
            }
        }
        AuditCmd::Batches {
            batches,
            vault_key,
            study,
            ledger,
            html,
        } => {
            let study = study_id(&study)?;
            let vault = VaultKey::load(&vault_key)?;
            let store = BatchStore::open_location(&batches)?;
            let (index, _) = open_index(&ledger, false)?;
            let report = audit::audit_batches(&index, &store, &vault, &study)?;
            print!("{}", report.render_text());
            html_out(html.as_ref(), || report.to_html())?;
            if !report.violations.is_empty() {
                return Err(AnalyticsError::AuditFailed(format!(
                    "{} in the sealed batches of {study}",
                    audit::plural(report.violations.len() as u64, "violation", "violations")
                ))
                .into());
            }
        }
    }
    Ok(())
}

fn now(args: &LedgerArgs) -> i64 {
    args.now
        .unwrap_or_else(|| jiff::Timestamp::now().as_second())
}

fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Keygen { out } => {
            let pk = generate_steward_key(&out)?;
            println!("{}", pk.to_base64());
            eprintln!(
                "wrote {} (steward key) and {}.pub (its public key)",
                out.display(),
                out.display()
            );
        }
        Cmd::VaultKeygen { out, key_id } => {
            let key = VaultKey::generate(key_id);
            key.save(&out)?;
            println!("vault key {key_id} written to {}", out.display());
        }
        Cmd::Study {
            cmd: StudyCmd::Sign { study, key, out },
        } => {
            let text = std::fs::read_to_string(&study)
                .with_context(|| format!("reading {}", study.display()))?;
            let def = StudyDefinition::from_toml(&text).map_err(|e| {
                AnalyticsError::Refused(format!(
                    "{}: {}",
                    study.display(),
                    e.to_string().replace('\n', " ")
                ))
            })?;
            let key = load_steward_key(&key)?;
            let signed = SignedObject::sign(Context::StudyDefinition, &def, &key);
            write_new(&out, &signed.to_bytes())?;
            eprintln!("wrote {} (signed study {})", out.display(), def.id);
        }
        Cmd::Study {
            cmd:
                StudyCmd::Bundle {
                    study,
                    ledger_vkey,
                    witnesses,
                    witness_quorum,
                    key,
                    out,
                },
        } => {
            let key = load_steward_key(&key)?;
            let bytes = study_file(&study.display().to_string(), "study bundle")?;
            let def = open_study(&bytes, &[key.public_key()])?;
            let digest = SignedObject::from_bytes(&bytes)
                .map_err(|e| AnalyticsError::Refused(format!("{}: {e}", study.display())))?
                .payload_digest();
            let quorum = witness_quorum.unwrap_or(witnesses.len() as u32);
            let bundle = datadonor_schemas::bundle::StudyBundle::new(
                &def,
                digest,
                &ledger_vkey,
                witnesses,
                quorum,
            );
            bundle
                .parsed_keys()
                .map_err(|e| AnalyticsError::Refused(e.to_string()))?;
            write_new(&out, &bundle.sign(&key).to_bytes())?;
            eprintln!(
                "wrote {} (bundle of study {} v{}, {} witnesses, quorum {quorum})",
                out.display(),
                def.id,
                def.version,
                bundle.witnesses.len()
            );
        }
        Cmd::Approve {
            spec,
            key,
            researcher,
            valid_days,
            max_runs,
            study,
            epsilon,
            delta,
            out,
        } => {
            let privacy = datadonor_schemas::privacy::PrivacySpend { epsilon, delta };
            privacy
                .validate()
                .map_err(|e| AnalyticsError::Refused(e.to_string()))?;
            let file = load_spec(&spec)?;
            let q = &file.spec;
            if researcher != q.researcher {
                return Err(AnalyticsError::Refused(format!(
                    "--researcher {researcher:?} is not the spec's researcher {:?}",
                    q.researcher
                ))
                .into());
            }
            let key = load_steward_key(&key)?;
            if let Some(s) = study {
                let bytes = study_file(&s, "approve")?;
                let def = open_study(&bytes, &[key.public_key()])?;
                file.validate(&def)?;
            }
            let mut approval_id = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut approval_id)
                .map_err(|_| anyhow!("no randomness"))?;
            let now = jiff::Timestamp::now().as_second();
            let a = QueryApproval {
                format: datadonor_schemas::PROTOCOL_VERSION,
                approval_id,
                query_sha256: q.hash(),
                study_id: q.study.clone(),
                purpose: q.purpose.clone(),
                researcher,
                not_before: now,
                not_after: now + i64::from(valid_days) * 86_400,
                max_runs,
                privacy: Some(privacy),
            };
            write_new(&out, &a.sign(&key).to_bytes())?;
            eprintln!(
                "wrote {} (approval for {} to run {} for {}, valid until {}, {})",
                out.display(),
                a.researcher,
                spec.display(),
                a.purpose,
                audit::fmt_time(a.not_after),
                audit::plural(u64::from(max_runs), "run", "runs")
            );
        }
        Cmd::Serve {
            listen,
            tls_cert,
            tls_key,
            study,
            batches,
            vault_key,
            approvers,
            researchers,
            ledger,
            auditor_token,
            analytics_token,
            ca,
            ledger_vkey,
            state_dir,
        } => {
            let approvers_keys = load_approvers(&approvers)?;
            let study_bytes = study_file(&study, "serve")?;
            let def = open_study(&study_bytes, &approvers_keys)?;
            let args = LedgerArgs {
                ledger: Some(ledger),
                auditor_token: Some(auditor_token),
                analytics_token: Some(analytics_token),
                ca: Some(ca),
                ledger_file: None,
                ledger_checkpoint: None,
                ledger_vkey,
                state_dir: state_dir.clone(),
                now: None,
                witnesses: Vec::new(),
                witness_quorum: None,
            };
            let (mut http, verifier) = http_ledger(&args, true)?;
            http.set_verifiers(vec![verifier.clone()]);
            let parts = ServiceParts {
                study: def,
                approvers: approvers_keys,
                researchers: Researchers::load(&researchers)?,
                vault: VaultKey::load(&vault_key)?,
                store: BatchStore::open_location(&batches)?,
                ledger: Box::new(VerifiedLedger {
                    source: http,
                    verifiers: vec![verifier],
                    state_dir: state_dir.clone(),
                }),
                state_dir,
                clock: std::sync::Arc::new(datadonor_schemas::time::SystemClock),
            };
            let svc = std::sync::Arc::new(QueryService::new(parts)?);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let running = service::start(svc, listen, &tls_cert, &tls_key).await?;
                eprintln!("query service listening on {}", running.base_url());
                let _ = tokio::signal::ctrl_c().await;
                running.shutdown().await;
                Ok::<(), anyhow::Error>(())
            })?;
        }
        Cmd::Compact {
            batches,
            vault_key,
            study,
            target_rows,
            abandon_interrupted,
            analytics_token,
            mut ledger,
        } => {
            ledger.analytics_token = analytics_token;
            let only = study.as_deref().map(study_id).transpose()?;
            let vault = VaultKey::load(&vault_key)?;
            let store = BatchStore::open_location(&batches)?;
            if abandon_interrupted && store.abandon_interrupted()? {
                eprintln!(
                    "{}: finished or rolled back an interrupted compaction",
                    store.location()
                );
            }
            let (view, sink) = open_index(&ledger, true)?;
            let studies = match only {
                Some(s) => vec![s],
                None => store.studies()?,
            };
            for s in studies {
                let r = compact(
                    &store,
                    &s,
                    &vault,
                    &view,
                    sink.as_ref(),
                    now(&ledger),
                    CompactOptions { target_rows },
                )?;
                for w in &r.written {
                    eprintln!("wrote {}", w.display());
                }
                println!(
                    "{s}: {} erased, {} removed, {} written, {} kept, {}",
                    audit::plural(
                        r.erased
                            .keys()
                            .map(|(p, _)| p)
                            .collect::<std::collections::BTreeSet<_>>()
                            .len() as u64,
                        "donor",
                        "donors"
                    ),
                    audit::plural(r.removed.len() as u64, "batch", "batches"),
                    r.written.len(),
                    audit::plural(r.rows_kept, "row", "rows"),
                    audit::plural(r.entries_logged, "ledger entry", "ledger entries")
                );
            }
        }
        Cmd::Audit { cmd } => run_audit(cmd)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    // Colours only on a terminal: a log redirected to a file or pipe stays plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let refused = matches!(
                e.downcast_ref::<AnalyticsError>(),
                Some(AnalyticsError::Refused(_))
            );
            // A log that is not what it signed (rewritten, rolled back, entries that do not
            // hash to the signed root) is an audit finding, not an operational error.
            let audit_failed = matches!(
                e.downcast_ref::<AnalyticsError>(),
                Some(AnalyticsError::AuditFailed(_))
            );
            let log_violation = matches!(
                e.downcast_ref::<AnalyticsError>(),
                Some(AnalyticsError::Ledger(
                    LedgerError::Inconsistent { .. }
                        | LedgerError::Rollback { .. }
                        | LedgerError::RootMismatch { .. }
                        | LedgerError::LeafHashMismatch { .. }
                        | LedgerError::MissingEntries { .. }
                        | LedgerError::Witnesses(_)
                ))
            );
            let msg = format!("{e:#}").replace('\n', " ");
            if audit_failed {
                eprintln!("datadonor-analytics: {msg}");
                ExitCode::from(4)
            } else if log_violation {
                eprintln!("datadonor-analytics: violation: {msg}");
                ExitCode::from(4)
            } else if refused {
                let msg = msg.strip_prefix("refused: ").unwrap_or(&msg);
                eprintln!("datadonor-analytics: refused: {msg}");
                ExitCode::from(3)
            } else {
                eprintln!("datadonor-analytics: error: {msg}");
                ExitCode::from(1)
            }
        }
    }
}
