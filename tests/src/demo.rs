//! The end-to-end demo as a library function, so the demo binary and the end-to-end test run
//! the same code.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use datadonor_analytics::audit::plural;
use datadonor_client::keystore::StoredReceipt;
use datadonor_client::session::minimise_blocking;
use datadonor_client::{
    ConsentChoice, Intake, IntakeConfig, IntakeSession, MinimiseOptions, TrustAnchors,
};
use datadonor_schemas::cosignature::WitnessSigner;
use datadonor_schemas::pseudonym::Cpr;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::{Clock, SystemClock};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::synthpop::{self, PopulationConfig};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of donors.
    pub donors: u64,
    /// Population seed.
    pub seed: u64,
    /// Donations in flight.
    pub concurrency: usize,
    /// Percentage who withdraw.
    pub withdraw_percent: u64,
    /// Keep the working directory here.
    pub keep: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What happened, for the closing summary and for tests.
#[derive(Debug, Default, Clone)]
pub struct DemoSummary {
    /// Donors generated.
    pub donors: u64,
    /// Donations acknowledged with a verified receipt.
    pub donated: u64,
    /// Donors with no row the study asks for (nothing to donate).
    pub nothing_to_donate: u64,
    /// Rows donated.
    pub rows: u64,
    /// Withdrawals acknowledged with a verified receipt.
    pub withdrawn: u64,
    /// Pseudonymiser instances (t, n).
    pub pseudonymisers: (u16, u16),
    /// Donations by how many instances' answers were combined, and how many answers were
    /// refused or missing over all donations.
    pub instances_answered: std::collections::BTreeMap<usize, u64>,
    /// Answers refused or missing.
    pub instances_rejected: u64,
    /// Seconds spent donating.
    pub donate_secs: f64,
    /// The researcher's table as printed.
    pub table: String,
    /// Cells published and suppressed.
    pub cells: (u64, u64),
    /// Distinct donors the query considered.
    pub donors_considered: u64,
    /// Rows erased by compaction.
    pub rows_erased: u64,
    /// Checks that passed, one line each.
    pub checks: Vec<String>,
    /// The working directory when it is kept (`--keep`); `None` when it was a temporary one,
    /// removed when the demo ended.
    pub dir: Option<PathBuf>,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.table)?;
        writeln!(f, "Datadonor demo summary")?;
        writeln!(f, "  donors generated            {}", self.donors)?;
        writeln!(
            f,
            "  donations acknowledged      {} ({}, {:.1} donations/s); {} nothing the study asks for",
            self.donated,
            plural(self.rows, "row", "rows"),
            self.donated as f64 / self.donate_secs.max(1e-9),
            plural(self.nothing_to_donate, "donor had", "donors had")
        )?;
        writeln!(f, "  withdrawals acknowledged    {}", self.withdrawn)?;
        let answered: Vec<String> = self
            .instances_answered
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} from {}",
                    plural(*v, "donation", "donations"),
                    plural(*k as u64, "instance", "instances")
                )
            })
            .collect();
        writeln!(
            f,
            "  pseudonymisers              {} of {} needed; {}; {} refused or missing",
            self.pseudonymisers.0,
            self.pseudonymisers.1,
            answered.join(", "),
            plural(self.instances_rejected, "answer", "answers")
        )?;
        writeln!(
            f,
            "  query                       {} considered, {} published, {} suppressed",
            plural(self.donors_considered, "donor", "donors"),
            plural(self.cells.0, "cell", "cells"),
            self.cells.1
        )?;
        writeln!(
            f,
            "  compaction                  {} of withdrawn donors erased",
            plural(self.rows_erased, "row", "rows")
        )?;
        writeln!(f, "  verified:")?;
        for c in &self.checks {
            writeln!(f, "    ok  {c}")?;
        }
        match &self.dir {
            Some(dir) => write!(f, "  working directory           {}", dir.display()),
            None => write!(f, "  working directory           (temporary, removed)"),
        }
    }
}

/// One donor's completed donation.
struct Donated {
    index: u64,
    rows: u64,
    /// The donor's key and stored receipt, kept only for donors who will withdraw, so memory
    /// does not grow with the population.
    kept: Option<(SigningKey, StoredReceipt)>,
    /// Pseudonymiser answers combined, and refused or missing.
    instances: usize,
    rejected: usize,
}

/// Which donors withdraw: every `100 / percent`-th donor by index; none at 0 %.
fn withdraws(index: u64, percent: u64) -> bool {
    percent > 0 && index % (100 / percent.min(100)).max(1) == 0
}

/// Run the demo.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary> {
    let tmp;
    let work: PathBuf = match &opts.keep {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            p.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let mut summary = DemoSummary {
        donors: opts.donors,
        dir: opts.keep.clone(),
        ..Default::default()
    };
    let now = SystemClock.now();

    // 1. The threshold pseudonymisation service: 2 of 3 instances, keys from a distributed key
    // generation, each instance requiring a donor credential from the study's enrolment.
    let enrolment = SigningKey::generate()?;
    let donors = opts.donors;
    let pseudonymisers = datadonor_pseudonymiser::local::start_local(
        &work.join("pseudonymisers"),
        "dk-pseudonymiser",
        3,
        2,
        Some(&enrolment.public_key()),
        |c| {
            // Every simulated donor connects from 127.0.0.1: lift the per-address limit; the
            // per-credential limit stays (one credential per donor).
            c.per_address_burst = u32::try_from(donors.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .max(100);
            c.per_address_per_second = 100_000.0;
        },
    )
    .await
    .context("starting the pseudonymiser instances")?;
    summary.pseudonymisers = (
        pseudonymisers.config.threshold,
        pseudonymisers.config.instances.len() as u16,
    );
    summary.checks.push(format!(
        "{} pseudonymiser instances serving TLS 1.3, keys from a distributed key generation ({} needed per pseudonym)",
        pseudonymisers.config.instances.len(),
        pseudonymisers.config.threshold
    ));

    // 2. The intake, with fresh keys; the example study embeds the pseudonymiser configuration.
    let intake_dir = work.join("intake");
    let init = datadonor_intake::init::init_with(
        &intake_dir,
        datadonor_intake::init::InitOptions {
            pseudonymiser: Some(&pseudonymisers.config),
            ..Default::default()
        },
        now,
    )
    .context("initialising the intake")?;
    let mut config =
        datadonor_intake::Config::load_dir(&intake_dir).context("loading the intake config")?;
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Every simulated donor reads the public tree heads and proofs from 127.0.0.1.
    config.limits.public_read_burst = 1_000_000;
    config.limits.public_reads_per_second = 1_000_000.0;

    // Two witnesses of the ledger, in this process, served with the intake's development
    // certificate: each cosigns a checkpoint only if it is consistent with those it cosigned.
    let ledger_vkey = {
        let opened = datadonor_intake::Intake::open(config.clone(), Arc::new(SystemClock))
            .context("opening the intake's ledger")?;
        let v = opened.state().0.verifier.clone();
        opened.shutdown();
        v
    };
    let witness_tls = datadonor_service::tls_config(
        &intake_dir.join("tls/server.pem"),
        &intake_dir.join("tls/server.key"),
    )
    .map_err(|e| anyhow!("the witnesses' TLS configuration: {e}"))?;
    let mut witnesses = Vec::new();
    let mut witness_keys = Vec::new();
    for n in 1..=2 {
        let signer =
            WitnessSigner::new(&format!("witness.localhost/w{n}"), SigningKey::generate()?)?;
        let key = signer.public().clone();
        let served = datadonor_witness::server::start_for_log(
            signer,
            &config.ledger.origin,
            ledger_vkey.clone(),
            &work.join(format!("witness-{n}")),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            witness_tls.clone(),
        )
        .await
        .context("starting a witness")?;
        config
            .witnesses
            .push(datadonor_intake::config::WitnessConfig {
                url: format!("https://localhost:{}", served.addr().port()),
                vkey: key.to_vkey(),
                ca_cert: "tls/ca.pem".into(),
            });
        witness_keys.push(key);
        witnesses.push(served);
    }
    summary.checks.push(format!(
        "{} witnesses serving TLS 1.3, asked by the intake to cosign every checkpoint",
        witnesses.len()
    ));
    // The steward signs the bundle donors pin: the study, the ledger's key and both witnesses,
    // all required.
    {
        let steward = SigningKey::from_key_file(
            &std::fs::read_to_string(intake_dir.join("steward/steward.key"))
                .context("reading the steward key")?,
        )?;
        let signed = datadonor_schemas::signing::SignedObject::from_bytes(
            &std::fs::read(intake_dir.join("studies/t2d-dk.json"))
                .context("reading the signed study")?,
        )?;
        let definition = datadonor_schemas::study::StudyDefinition::from_json(&signed.payload)?;
        let bundle = datadonor_schemas::bundle::StudyBundle::new(
            &definition,
            signed.payload_digest(),
            &ledger_vkey.to_vkey(),
            witness_keys.iter().map(|k| k.to_vkey()).collect(),
            witness_keys.len() as u32,
        );
        std::fs::write(
            intake_dir.join("studies/bundles/t2d-dk.json"),
            bundle.sign(&steward).to_bytes(),
        )
        .context("writing the study bundle")?;
    }

    let running = datadonor_intake::start(config)
        .await
        .context("starting the intake")?;
    let mut ca = std::fs::read(running.ca_pem_path()).context("reading the intake's CA")?;
    ca.extend_from_slice(pseudonymisers.ca_pem.as_bytes());
    summary.checks.push(format!(
        "intake serving TLS 1.3 on {} with fresh keys",
        running.base_url()
    ));

    // 3. Donors donate concurrently through the client library.
    let intake = Intake::new(IntakeConfig::new(
        running.base_url(),
        TrustAnchors::CaPem(ca.clone()),
    ))?;
    let session = IntakeSession::connect(intake, None)
        .await
        .context("connecting to the intake")?;
    let study_id = StudyId::new("t2d-dk")?;
    let study = Arc::new(
        session
            .intake()
            .study(&study_id)
            .await
            .context("fetching the study")?,
    );
    let pop = PopulationConfig {
        seed: opts.seed,
        donors: opts.donors,
        ..PopulationConfig::default()
    };
    // Each donor's export is written, imported and deleted again, so disk use does not grow
    // with the population either (`datadonor-synth` writes a population's exports to keep).
    let exports = work.join("exports");
    std::fs::create_dir_all(&exports)?;
    let withdraw_percent = opts.withdraw_percent;
    let bar = progress_bar(opts.progress, opts.donors, "donating");
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks: JoinSet<Result<Option<Donated>>> = JoinSet::new();
    let mut donated: Vec<(u64, SigningKey, StoredReceipt)> = Vec::new();
    for donor in synthpop::donors(&pop) {
        let permit = permits.clone().acquire_owned().await?;
        // The study's enrolment issues this donor a credential (after an e-ID login).
        let credential = datadonor_schemas::signing::SignedObject::sign(
            datadonor_schemas::signing::Context::DonorCredential,
            &datadonor_schemas::threshold::DonorCredential {
                format: datadonor_schemas::PROTOCOL_VERSION,
                config_id: "dk-pseudonymiser".into(),
                subject: rand::random(),
                not_after: now + 86_400,
            },
            &enrolment,
        );
        let session = session.with_credential(datadonor_client::client::DonorCredentialToken::new(
            &datadonor_schemas::threshold::DonorCredential::bearer(&credential),
        ));
        let (study, exports, bar) = (study.clone(), exports.clone(), bar.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let keep = withdraws(donor.index, withdraw_percent);
            let out = donate_one(&session, &study, &exports, keep, donor).await;
            bar.inc(1);
            out
        });
        while let Some(done) = tasks.try_join_next() {
            if let Some(d) = collect(done, &mut summary)? {
                donated.push(d);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Some(d) = collect(done, &mut summary)? {
            donated.push(d);
        }
    }
    bar.finish_and_clear();
    summary.donate_secs = started.elapsed().as_secs_f64();
    if summary.donated == 0 {
        bail!("no donation was acknowledged");
    }
    summary.checks.push(format!(
        "{} receipts: ledger signature, signed tree head and inclusion proof verified on arrival",
        summary.donated
    ));

    // 4. Some donors withdraw.
    donated.sort_by_key(|(index, _, _)| *index);
    let mut withdrawn = Vec::new();
    for (index, key, stored) in &donated {
        let (receipt, _) = session
            .withdraw(stored, key)
            .await
            .with_context(|| format!("donor {index} withdrawing"))?;
        withdrawn.push(receipt.receipt.pseudonym);
        summary.withdrawn += 1;
    }
    summary.checks.push(format!(
        "{} withdrawal receipts verified",
        summary.withdrawn
    ));

    // 5. A donor takes the witnesses from the study's bundle (signed by the steward, checked
    // against the study and the ledger key), fetches the current tree head (waiting a bounded
    // time for the cosignatures) and re-checks a receipt against it.
    let bundle = session
        .intake()
        .study_bundle(&study, session.ledger())
        .await
        .context("fetching the study bundle")?;
    let policy = datadonor_client::pins::bundle_witness_policy(&bundle)?
        .ok_or_else(|| anyhow!("the study bundle names no witnesses"))?;
    summary.checks.push(format!(
        "study bundle signed by the steward verified: ledger key and {} witnesses, quorum {}",
        bundle.witnesses.len(),
        bundle.signed.body.witness_quorum
    ));
    let witnessed = session
        .intake()
        .witnessed_checkpoint(session.ledger(), &policy, 0, &SystemClock)
        .await
        .context("fetching the cosigned checkpoint")?;
    summary.checks.push(format!(
        "checkpoint of {} entries cosigned by {} of {} witnesses ({})",
        witnessed.checkpoint.size,
        witnessed.cosigned_by.len(),
        witness_keys.len(),
        witnessed.cosigned_by.join(", ")
    ));
    if let Some((_, _, first)) = donated.first() {
        let mut cfg = IntakeConfig::new(running.base_url(), TrustAnchors::CaPem(ca.clone()));
        cfg.auditor_token = Some(datadonor_client::client::AuditorToken::new(
            &init.auditor_token,
        ));
        let auditor = Intake::new(cfg)?;
        let s = IntakeSession::connect(auditor, None)
            .await?
            .with_witnesses(Some(policy));
        let v = s
            .verify(first, None)
            .await
            .context("re-verifying a receipt")?;
        summary.checks.push(format!(
            "a stored receipt is included in the current tree (size {})",
            v.current
                .as_ref()
                .map(|c| c.0)
                .unwrap_or(v.receipt.tree_size)
        ));
    }

    crate::demo_research::research_and_audit(
        &intake_dir,
        &running,
        &init,
        &withdrawn,
        &mut summary,
    )
    .await?;

    running.shutdown().await.context("stopping the intake")?;
    for w in witnesses {
        w.shutdown().await;
    }
    pseudonymisers.shutdown().await;
    summary
        .checks
        .push("intake shut down cleanly (drained, committed)".into());
    Ok(summary)
}

/// Counts a finished donation; returns what is kept of it for the withdrawal step.
fn collect(
    done: std::result::Result<Result<Option<Donated>>, tokio::task::JoinError>,
    summary: &mut DemoSummary,
) -> Result<Option<(u64, SigningKey, StoredReceipt)>> {
    match done.map_err(|e| anyhow!("donor task failed: {e}"))?? {
        Some(d) => {
            summary.donated += 1;
            summary.rows += d.rows;
            *summary.instances_answered.entry(d.instances).or_default() += 1;
            summary.instances_rejected += d.rejected as u64;
            Ok(d.kept.map(|(key, stored)| (d.index, key, stored)))
        }
        None => {
            summary.nothing_to_donate += 1;
            Ok(None)
        }
    }
}

async fn donate_one(
    session: &IntakeSession,
    study: &datadonor_client::PublishedStudy,
    exports: &Path,
    keep_receipt: bool,
    donor: synthpop::Donor,
) -> Result<Option<Donated>> {
    let path = exports.join(format!("{}.json", donor.id));
    let d2 = donor.clone();
    let p2 = path.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::io::BufWriter::new(std::fs::File::create(&p2)?);
        synthpop::fhir::write_fhir_bundle(&d2, f)?;
        Ok(())
    })
    .await??;
    let cpr = Cpr::parse(&donor.cpr).map_err(|e| anyhow!("donor {}: {e}", donor.index))?;
    let rows = minimise_blocking(
        vec![path.clone()],
        study.definition.clone(),
        MinimiseOptions::default().with_cpr(&cpr),
    )
    .await
    .with_context(|| format!("donor {}: minimising {}", donor.index, path.display()))?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if rows.rows.is_empty() {
        return Ok(None);
    }
    let n = rows.rows.len() as u64;
    let key = SigningKey::generate()?;
    let mut purposes = vec!["t2d-epidemiology".to_string()];
    if donor.index % 3 == 0 {
        purposes.push("t2d-care-quality".to_string());
    }
    let consent = ConsentChoice {
        purposes,
        expires_in_days: 365,
        language: None,
    };
    let out = session
        .donate(study, &rows, &cpr, &key, &consent)
        .await
        .with_context(|| format!("donor {} donating", donor.index))?;
    Ok(Some(Donated {
        index: donor.index,
        rows: n,
        kept: keep_receipt.then_some((key, out.stored)),
        instances: out.pseudonymisers_used.len(),
        rejected: out.pseudonymisers_rejected.len(),
    }))
}

fn progress_bar(show: bool, len: u64, msg: &'static str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_working_directory_only_when_it_was_kept() {
        let removed = DemoSummary::default().to_string();
        assert!(
            removed.ends_with("  working directory           (temporary, removed)"),
            "{removed}"
        );
        let kept = DemoSummary {
            dir: Some(PathBuf::from("/var/tmp/demo-kept")),
            ..DemoSummary::default()
        }
        .to_string();
        assert!(
            kept.ends_with("  working directory           /var/tmp/demo-kept"),
            "{kept}"
        );
    }

    #[test]
    fn the_summary_counts_in_the_singular_and_the_plural() {
        let one = DemoSummary {
            donors: 1,
            donated: 1,
            nothing_to_donate: 1,
            rows: 1,
            pseudonymisers: (2, 3),
            instances_answered: [(2, 1)].into_iter().collect(),
            instances_rejected: 1,
            donate_secs: 1.0,
            cells: (1, 0),
            donors_considered: 1,
            rows_erased: 1,
            ..DemoSummary::default()
        }
        .to_string();
        for s in [
            "(1 row, 1.0 donations/s); 1 donor had nothing the study asks for",
            "2 of 3 needed; 1 donation from 2 instances; 1 answer refused or missing",
            "1 donor considered, 1 cell published, 0 suppressed",
            "1 row of withdrawn donors erased",
        ] {
            assert!(one.contains(s), "{s:?} in {one}");
        }
        let two = DemoSummary {
            nothing_to_donate: 2,
            rows: 2,
            instances_answered: [(3, 2)].into_iter().collect(),
            rows_erased: 2,
            ..DemoSummary::default()
        }
        .to_string();
        for s in [
            "(2 rows, ",
            "2 donors had nothing",
            "2 donations from 3 instances; 0 answers refused",
            "2 rows of withdrawn donors erased",
        ] {
            assert!(two.contains(s), "{s:?} in {two}");
        }
    }
}
