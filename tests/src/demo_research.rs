//! The steward's, researcher's and auditor's part of the demo: approve the example query with a
//! privacy spend, start the steward's query service (the only holder of the vault key), run the
//! query through it as the researcher (a signed request over TLS, a differentially private table
//! back), compact away withdrawn donors, and audit the ledger and the batches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use datadonor_analytics::compact::{compact, CompactOptions};
use datadonor_analytics::ledger::verify_ledger;
use datadonor_analytics::ledger::VerifiedLedger;
use datadonor_analytics::ledger_http::HttpLedger;
use datadonor_analytics::query::open_study;
use datadonor_analytics::sealed::open_batch_file;
use datadonor_analytics::service::{self, QueryService, Researchers, ServiceParts};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::time::{Clock, SystemClock};
use zeroize::Zeroizing;

use crate::demo::DemoSummary;

/// What the demo's approval lets one run spend (the example study's researcher budget is ε = 6).
pub const DEMO_RUN_SPEND: datadonor_schemas::privacy::PrivacySpend =
    datadonor_schemas::privacy::PrivacySpend {
        epsilon: 5.0,
        delta: 5e-6,
    };

/// The example query the researcher submits.
pub const EXAMPLE_QUERY: &str = include_str!("../../examples/t2d-query.toml");

struct Paths {
    intake: PathBuf,
    base_url: String,
    ca: PathBuf,
    auditor_token: Zeroizing<String>,
    analytics_token: Zeroizing<String>,
    vault_key: PathBuf,
    runtime: tokio::runtime::Handle,
}

pub(crate) async fn research_and_audit(
    intake_dir: &Path,
    running: &datadonor_intake::RunningIntake,
    init: &datadonor_intake::init::InitReport,
    withdrawn: &[Pseudonym],
    summary: &mut DemoSummary,
) -> Result<()> {
    let analytics_token = std::fs::read_to_string(intake_dir.join("analytics.token"))
        .context("reading the analytics token")?;
    let paths = Paths {
        intake: intake_dir.to_path_buf(),
        base_url: running.base_url(),
        ca: running.ca_pem_path(),
        auditor_token: init.auditor_token.clone(),
        analytics_token: Zeroizing::new(analytics_token.trim().to_string()),
        vault_key: init
            .vault_private_key
            .clone()
            .ok_or_else(|| anyhow!("init made no vault key"))?,
        runtime: tokio::runtime::Handle::current(),
    };
    let withdrawn: HashSet<Pseudonym> = withdrawn.iter().copied().collect();
    let mut s = std::mem::take(summary);
    // The ledger client is blocking; run the steward, researcher and auditor off the runtime.
    let s = tokio::task::spawn_blocking(move || -> Result<DemoSummary> {
        research_blocking(&paths, &withdrawn, &mut s)?;
        Ok(s)
    })
    .await??;
    *summary = s;
    Ok(())
}

fn research_blocking(
    p: &Paths,
    withdrawn: &HashSet<Pseudonym>,
    summary: &mut DemoSummary,
) -> Result<()> {
    let now = SystemClock.now();
    // The steward: the demo steward key that signed the study approves the example query.
    let steward =
        datadonor_analytics::keys::load_steward_key(&p.intake.join("steward/steward.key"))?;
    let approvers = vec![steward.public_key()];
    let study_bytes =
        std::fs::read(p.intake.join("studies/t2d-dk.json")).context("reading the signed study")?;
    let study = open_study(&study_bytes, &approvers)?;
    let spec = QuerySpec::from_toml(EXAMPLE_QUERY)?;
    spec.validate(&study)?;
    let mut approval_id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut approval_id)
        .map_err(|_| anyhow!("no randomness"))?;
    let approval = QueryApproval {
        format: datadonor_schemas::PROTOCOL_VERSION,
        approval_id,
        query_sha256: spec.hash(),
        study_id: study.id.clone(),
        purpose: spec.purpose.clone(),
        researcher: spec.researcher.clone(),
        not_before: now - 60,
        not_after: now + 30 * 86_400,
        max_runs: 3,
        privacy: Some(DEMO_RUN_SPEND),
    }
    .sign(&steward);
    summary
        .checks
        .push("steward approval bound to the query hash, purpose, researcher and window".into());

    // An approval for this query does not run another.
    let mut other = spec.clone();
    other.k = spec.k + 1;
    if datadonor_schemas::query::check_approval(&approval, &other, &approvers, now, 0).is_ok() {
        bail!("an approval for one query ran another");
    }
    summary
        .checks
        .push("the approval refuses a query that differs from the approved one".into());

    // The researcher: ledger through the auditor endpoints, verified against signed tree heads.
    let mut ledger = HttpLedger::with_ca_file(
        &p.base_url,
        p.auditor_token.clone(),
        Some(p.analytics_token.clone()),
        &p.ca,
    )?;
    let key = ledger.ledger_key()?;
    let verifier = NoteVerifier::parse_vkey(&key.vkey).map_err(|e| anyhow!("ledger vkey: {e}"))?;
    ledger.set_verifiers(vec![verifier.clone()]);
    let state = p.intake.join("../analytics-state");
    std::fs::create_dir_all(&state)?;
    let view = verify_ledger(&ledger, std::slice::from_ref(&verifier), Some(&state))?;
    summary.checks.push(format!(
        "ledger of {} entries matches its signed tree head",
        view.all().count()
    ));

    // The steward's query service: the only process holding the vault key. It reads the
    // ledger from the intake (verified against its signed checkpoints) and serves the
    // researcher over TLS 1.3.
    let researcher_key = datadonor_schemas::signing::SigningKey::generate()
        .map_err(|e| anyhow!("researcher key: {e}"))?;
    let service_dir = p.intake.join("../query-service");
    let ca = datadonor_pseudonymiser::tls::DevCa::new()?;
    ca.issue_into(&service_dir, 0)?;
    let mut service_ledger = HttpLedger::with_ca_file(
        &p.base_url,
        p.auditor_token.clone(),
        Some(p.analytics_token.clone()),
        &p.ca,
    )?;
    service_ledger.set_verifiers(vec![verifier.clone()]);
    let svc = QueryService::new(ServiceParts {
        study: study.clone(),
        approvers: approvers.clone(),
        researchers: Researchers::parse(
            &format!(
                "{} {}\n",
                spec.researcher,
                researcher_key.public_key().to_base64()
            ),
            &service_dir.join("researchers"),
        )?,
        vault: VaultKey::load(&p.vault_key)?,
        store: BatchStore::open(&p.intake.join("batches").join(study.id.as_str()))?,
        ledger: Box::new(VerifiedLedger {
            source: service_ledger,
            verifiers: vec![verifier.clone()],
            state_dir: service_dir.join("state"),
        }),
        state_dir: service_dir.join("state"),
        clock: std::sync::Arc::new(SystemClock),
    })?;
    let running = p.runtime.block_on(service::start(
        std::sync::Arc::new(svc),
        "127.0.0.1:0".parse()?,
        &service_dir.join("tls/server.pem"),
        &service_dir.join("tls/server.key"),
    ))?;
    // The researcher: a signed request with the approval; a differentially private table back.
    let released = datadonor_research::run_query_blocking(
        &running.base_url(),
        &service_dir.join("tls/ca.pem"),
        &researcher_key,
        EXAMPLE_QUERY,
        &approval,
    );
    p.runtime.block_on(running.shutdown());
    let released = released.map_err(|e| anyhow!("the query service: {e}"))?;
    summary.table = datadonor_research::output::to_text(&released);
    summary.cells = (released.cells_published(), released.cells_suppressed());
    summary.checks.push(format!(
        "query ran at the steward's query service: ε = {}, δ = {} spent, ε = {} left for the researcher",
        released.privacy.epsilon, released.privacy.delta, released.privacy.researcher_epsilon_left
    ));
    let view = verify_ledger(&ledger, std::slice::from_ref(&verifier), Some(&state))?;
    if let Some(LedgerEntry::QueryRun {
        donors_considered, ..
    }) = view.all().filter(|e| e.kind() == "query_run").last()
    {
        summary.donors_considered = *donors_considered;
    }
    let allowed = view.allowed_donors(&study.id, &spec.purpose, now);
    if allowed.iter().any(|d| withdrawn.contains(d)) {
        bail!("a withdrawn donor was counted");
    }
    // Every demo donor consents to the query's purpose, with a distinct CPR number and so a
    // distinct pseudonym: exactly those who did not withdraw count.
    let expected = summary.donated.saturating_sub(withdrawn.len() as u64);
    if allowed.len() as u64 != expected || summary.donors_considered != expected {
        bail!(
            "the query considered {} donors ({} allowed by the ledger), expected {expected}",
            summary.donors_considered,
            allowed.len()
        );
    }
    summary.checks.push(format!(
        "query counted {} consenting donors: every donor but the {} who withdrew; run logged at ledger index {}",
        allowed.len(),
        withdrawn.len(),
        released.ledger_index
    ));
    let store = BatchStore::open(&p.intake.join("batches").join(study.id.as_str()))?;
    let vault = VaultKey::load(&p.vault_key)?;

    // Compaction: erase withdrawn donors' rows.
    let view = verify_ledger(&ledger, std::slice::from_ref(&verifier), Some(&state))?;
    let report = compact(
        &store,
        &study.id,
        &vault,
        &view.index(),
        &ledger,
        SystemClock.now(),
        CompactOptions::default(),
    )?;
    summary.rows_erased = report.erased.values().map(|(rows, _)| *rows).sum();

    // The auditor: the log only grew (consistency with the head verified before), every
    // withdrawn donor has an erasure entry, and no sealed batch holds their rows.
    let view = verify_ledger(&ledger, std::slice::from_ref(&verifier), Some(&state))?;
    summary
        .checks
        .push("every new tree head is consistent with the last verified one (append-only)".into());
    let erased: HashSet<Pseudonym> = view
        .all()
        .filter_map(|e| match e {
            LedgerEntry::ErasureDone { pseudonym, .. } => Some(*pseudonym),
            _ => None,
        })
        .collect();
    if let Some(missing) = withdrawn.iter().find(|p| !erased.contains(p)) {
        bail!("withdrawn donor {missing:?} has no erasure entry");
    }
    let consented: HashSet<Pseudonym> = view.consent_states(&study.id).into_keys().collect();
    let mut rows = 0usize;
    for b in store.list(&study.id)? {
        let opened = open_batch_file(&b.path, &vault)?;
        for donor in crate::demo_audit::donors_in_parquet(&opened.plaintext)? {
            rows += 1;
            if withdrawn.contains(&donor) {
                bail!("{}: holds a row of a withdrawn donor", b.path.display());
            }
            if !consented.contains(&donor) {
                bail!(
                    "{}: holds a row of a donor with no consent entry",
                    b.path.display()
                );
            }
        }
    }
    summary.checks.push(format!(
        "{} erasure entries; {} rows in the compacted batches all belong to consenting donors",
        erased.len(),
        rows
    ));
    Ok(())
}
