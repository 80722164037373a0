//! Benchmark: the approved example query over sealed batches against the same polars query with
//! `scan_parquet` over the same rows as plaintext Parquet, in the same run:
//!
//! * (a) the exact run (unseal in memory, consent filter, partial aggregates, k-anonymity,
//!   ledger entry), as the steward's own reference runs use it;
//! * (c) the run through the steward's query service (`QueryService::run` on a signed researcher
//!   request: request checks, approval and budget reserved in the journal, unseal, aggregate,
//!   the differentially private release with OpenDP, ledger entry), in process, without TLS;
//! * (b) the engine over the same rows as plaintext Parquet;
//! * (e) with `--bucket s3://bucket/prefix`, run (a) with the sealed batches in an S3-compatible
//!   bucket instead of the directory (copied there once; endpoint and credentials from the
//!   `AWS_*` variables): listing by ranged header reads, each batch read with one `GET`;
//! * (d) the example query written plainly as a polars lazy query over the plaintext files
//!   ([`datadonor_analytics::plain::example_query`]: per-donor means per cell and margin, no
//!   disclosure control, no noise): the baseline a researcher compares with, and the one
//!   `tests/plain_query.rs` checks the engine's published values against.
//!
//! ```text
//! cargo bench -p datadonor-analytics --bench sealed_vs_plain -- --rows 1000000
//! ```
//!
//! Options: `--rows N` (default 20 000 000), `--donors N` (default 100 000), `--batch-rows N`
//! (default 1 000 000), `--repeat N` (default 1; the best time of N is reported), `--variants
//! abcd` (the variants to run; (b) and (d) hold every decoded row in memory at once, so a run at
//! 100 M rows leaves them out: `--variants ac`), `--dir PATH` (generate into PATH and keep it;
//! a later run with the same PATH and sizes reuses it), `--bucket s3://bucket/prefix` (adds (e)).
//!
//! Generation is not timed. Each variant runs in a child process (this binary re-executed with
//! `--child <variant> <dir>`) that reports its wall time and its own peak RSS (`VmHWM` from
//! `/proc/self/status`), so the two peaks do not mix.

mod child;

use std::path::{Path, PathBuf};
use std::time::Instant;

use child::{arg, run_child, vm_hwm_kib, Res};

use datadonor_analytics::engine::QueryEngine;
use datadonor_analytics::ledger::{
    encode_record, Appended, LedgerError, LedgerIndex, LedgerSink, LocalLedgerFile, ServiceLedger,
};
use datadonor_analytics::plain::example_query;
use datadonor_analytics::query::{apply_disclosure, run_query, QueryInputs};
use datadonor_analytics::sealed::seal_batch;
use datadonor_analytics::service::{QueryService, Researchers, ServiceParts};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{
    approval_of, donor, grant, parquet_bytes, synthetic_frame, Rng,
};
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::privacy::QueryRequest;
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::time::Clock;
use polars::prelude::*;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const QUERY: &str = include_str!("../../examples/t2d-query.toml");
const NOW: i64 = 1_750_000_000;

fn generate(dir: &Path, rows: usize, donors: usize, batch_rows: usize) -> Res<()> {
    let study = StudyDefinition::from_toml(STUDY)?;
    let vault = VaultKey::generate(1);
    vault.save(&dir.join("vault.key"))?;
    std::fs::create_dir_all(dir.join("sealed"))?;
    std::fs::create_dir_all(dir.join("plain"))?;
    let store = BatchStore::open(&dir.join("sealed"))?;
    let hex: Vec<String> = (0..donors as u32).map(|i| donor(i).to_hex()).collect();
    let mut rng = Rng::new(42);
    let mut done = 0usize;
    let mut part = 0usize;
    while done < rows {
        let n = batch_rows.min(rows - done);
        let mut df = synthetic_frame(&study, &hex, n, &mut rng)?;
        let bytes = parquet_bytes(&mut df)?;
        std::fs::write(
            dir.join("plain").join(format!("part-{part:05}.parquet")),
            &bytes,
        )?;
        let (h, sealed) = seal_batch(&bytes, &study.id, part as i64, &vault.public())?;
        store.write(&h, &sealed)?;
        done += n;
        part += 1;
    }
    // Ledger: every donor consented to the example's purpose (but one in 50 withdrew).
    let mut ledger = Vec::new();
    for i in 0..donors as u32 {
        ledger.extend(encode_record(
            &grant(&study, donor(i), &["t2d-epidemiology"], NOW + 86_400).to_bytes(),
        ));
        if i % 50 == 0 {
            ledger.extend(encode_record(
                &datadonor_analytics::testkit::withdraw(&study, donor(i), NOW - 1).to_bytes(),
            ));
        }
    }
    std::fs::write(dir.join("ledger.log"), ledger)?;
    let steward = SigningKey::generate()?;
    std::fs::write(dir.join("steward.seed"), steward.seed())?;
    let spec = QuerySpec::from_toml(QUERY)?;
    let approval = QueryApproval {
        privacy: Some(datadonor_schemas::privacy::PrivacySpend {
            epsilon: 1.0,
            delta: 1e-6,
        }),
        ..approval_of(&spec, 9, NOW, 1_000_000)
    };
    std::fs::write(dir.join("q.approval"), approval.sign(&steward).to_bytes())?;
    Ok(())
}

fn child(variant: &str, dir: &Path) -> Res<()> {
    let study = StudyDefinition::from_toml(STUDY)?;
    let spec = QuerySpec::from_toml(QUERY)?;
    let seed: [u8; 32] = std::fs::read(dir.join("steward.seed"))?
        .as_slice()
        .try_into()?;
    let steward = SigningKey::from_seed(&seed)?;
    let approval = SignedObject::from_bytes(&std::fs::read(dir.join("q.approval"))?)?;
    let approvers = [steward.public_key()];
    let inputs = QueryInputs {
        spec: &spec,
        approval: &approval,
        study: &study,
        approvers: &approvers,
        now: NOW,
    };
    let start = Instant::now();
    let ledger = LocalLedgerFile::new(&dir.join("ledger.log"), None);
    let view = ledger.unverified_view()?;
    let (cells, suppressed) = match variant {
        "sealed" | "bucket" => {
            let vault = VaultKey::load(&dir.join("vault.key"))?;
            let store = match variant {
                "bucket" => BatchStore::open_location(&std::env::var(BUCKET_ENV)?)?,
                _ => BatchStore::open(&dir.join("sealed"))?,
            };
            let out = run_query(&inputs, &view.index(), &store, &vault, &ledger)?;
            (out.table.rows.len(), out.table.cells_suppressed())
        }
        "plain" => {
            let allowed = view.allowed_record_donors(&study.id, &spec.purpose, NOW);
            let mut engine = QueryEngine::new(&spec, &study, &allowed)?;
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("plain"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            paths.sort();
            let paths: Vec<PlRefPath> = paths
                .iter()
                .map(|p| PlRefPath::new(p.display().to_string()))
                .collect();
            let args = ScanArgsParquet::default();
            let lf = LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)?;
            engine.add_lazy(lf)?;
            let agg = engine.finish()?;
            let t = apply_disclosure(&agg, &spec, spec.effective_k(&study))?;
            (t.rows.len(), t.cells_suppressed())
        }
        "query" => {
            // The example query as a researcher would write it in polars over plaintext files
            // (`datadonor_analytics::plain`): no disclosure control, no noise.
            let allowed = view.allowed_records(&study.id, &spec.purpose, NOW);
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("plain"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            paths.sort();
            let paths: Vec<PlRefPath> = paths
                .iter()
                .map(|p| PlRefPath::new(p.display().to_string()))
                .collect();
            let lf = LazyFrame::scan_parquet_files(
                paths.into_iter().collect(),
                ScanArgsParquet::default(),
            )?;
            let frames = example_query(lf, &allowed)?;
            (frames.iter().map(DataFrame::height).sum(), 0)
        }
        "service" => {
            let researcher = SigningKey::generate()?;
            let state = tempfile::tempdir()?;
            let svc = QueryService::new(ServiceParts {
                study: study.clone(),
                approvers: approvers.to_vec(),
                researchers: Researchers::parse(
                    &format!(
                        "{} {}\n",
                        spec.researcher,
                        researcher.public_key().to_base64()
                    ),
                    &dir.join("researchers"),
                )?,
                vault: VaultKey::load(&dir.join("vault.key"))?,
                store: BatchStore::open(&dir.join("sealed"))?,
                ledger: Box::new(FileLedger(LocalLedgerFile::new(
                    &dir.join("ledger.log"),
                    None,
                ))),
                state_dir: state.path().to_path_buf(),
                clock: std::sync::Arc::new(Fixed(NOW)),
            })?;
            let mut request_id = [0u8; 16];
            request_id[..8].copy_from_slice(&start.elapsed().as_nanos().to_le_bytes()[..8]);
            let body = SignedObject::sign(
                Context::QueryRequest,
                &QueryRequest {
                    format: 1,
                    request_id,
                    time: NOW,
                    spec_toml: QUERY.to_string(),
                    approval: approval.clone(),
                },
                &researcher,
            )
            .to_bytes();
            let t = svc.run(&body).map_err(|p| p.to_string())?;
            (t.rows.len(), t.cells_suppressed())
        }
        other => return Err(format!("unknown variant {other}").into()),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "secs={secs} hwm_kib={} cells={cells} suppressed={suppressed}",
        vm_hwm_kib()
    );
    Ok(())
}

/// The bench's ledger file as the service reads it (the file carries no signed checkpoint).
struct FileLedger(LocalLedgerFile);
impl ServiceLedger for FileLedger {
    fn verified_index(&self) -> Result<LedgerIndex, LedgerError> {
        Ok(self.0.unverified_view()?.index())
    }
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError> {
        LedgerSink::append(&self.0, entry)
    }
}

/// The variable the children read the bucket's URL from.
const BUCKET_ENV: &str = "DATADONOR_BENCH_BUCKET";

/// Copy the sealed batches into the bucket unless it holds them already; how many were copied.
fn copy_to_bucket(sealed: &Path, url: &str) -> Res<usize> {
    let bucket = BatchStore::open_location(url)?;
    let have: std::collections::HashSet<[u8; 16]> = bucket
        .list(&StudyDefinition::from_toml(STUDY)?.id)?
        .into_iter()
        .map(|b| b.header.batch_id)
        .collect();
    let mut copied = 0;
    for e in std::fs::read_dir(sealed)? {
        let bytes = std::fs::read(e?.path())?;
        let header = datadonor_analytics::sealed::read_header(sealed, &bytes)?;
        if !have.contains(&header.batch_id) {
            bucket.write(&header, &bytes)?;
            copied += 1;
        }
    }
    Ok(copied)
}

#[derive(Debug)]
struct Fixed(i64);
impl Clock for Fixed {
    fn now(&self) -> i64 {
        self.0
    }
}

fn timed(dir: &Path, variant: &str) -> Res<(f64, u64, String)> {
    let line = run_child(dir, variant)?;
    Ok((line.field("secs")?, line.field("hwm_kib")? as u64, line.0))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let variant = args.get(i + 1).ok_or("--child needs a variant")?;
        let dir = PathBuf::from(args.get(i + 2).ok_or("--child needs a dir")?);
        return child(variant, &dir);
    }
    let rows = arg(&args, "--rows", 20_000_000)?;
    let donors = arg(&args, "--donors", 100_000)?;
    let batch_rows = arg(&args, "--batch-rows", 1_000_000)?;
    let repeat = arg(&args, "--repeat", 1)?.max(1);
    let variants = match args.iter().position(|a| a == "--variants") {
        Some(i) => args.get(i + 1).ok_or("--variants needs a value")?.clone(),
        None => "abcd".to_string(),
    };
    let tmp;
    let dir: PathBuf = match args.iter().position(|a| a == "--dir") {
        Some(i) => PathBuf::from(args.get(i + 1).ok_or("--dir needs a path")?),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let t0 = Instant::now();
    let shape = format!("{rows} {donors} {batch_rows}\n");
    let mut generated = false;
    let old_shape = std::fs::read_to_string(dir.join("shape")).ok();
    if old_shape.as_deref() != Some(shape.as_str()) {
        match old_shape {
            // A benchmark directory of other sizes: ours to replace.
            Some(_) => std::fs::remove_dir_all(&dir)?,
            None if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() => {
                return Err(format!(
                    "{} is not empty and not a benchmark directory",
                    dir.display()
                )
                .into())
            }
            None => {}
        }
        std::fs::create_dir_all(&dir)?;
        generate(&dir, rows, donors, batch_rows)?;
        std::fs::write(dir.join("shape"), shape)?;
        generated = true;
    }
    let size = |d: &str| -> u64 {
        std::fs::read_dir(dir.join(d))
            .map(|r| {
                r.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let how = if generated {
        format!("generated in {:.1}s", t0.elapsed().as_secs_f64())
    } else {
        format!("reused from {}", dir.display())
    };
    println!(
        "{rows} rows, {donors} donors, batches of {batch_rows} ({how}): plaintext {} MiB, sealed {} MiB",
        size("plain") >> 20,
        size("sealed") >> 20
    );
    let mut variants = variants;
    if let Some(i) = args.iter().position(|a| a == "--bucket") {
        let url = args.get(i + 1).ok_or("--bucket needs s3://bucket/prefix")?;
        let copied = copy_to_bucket(&dir.join("sealed"), url)?;
        println!("bucket {url}: {copied} batches copied");
        // The children find it here.
        std::env::set_var(BUCKET_ENV, url);
        variants.push('e');
    }
    let mut best: [(f64, u64, String); 5] = Default::default();
    for b in &mut best {
        b.0 = f64::MAX;
    }
    for _ in 0..repeat {
        for (slot, (letter, v)) in [
            ('b', "plain"),
            ('a', "sealed"),
            ('c', "service"),
            ('d', "query"),
            ('e', "bucket"),
        ]
        .into_iter()
        .enumerate()
        {
            if !variants.contains(letter) {
                continue;
            }
            let r = timed(dir.as_path(), v)?;
            if r.0 < best[slot].0 {
                best[slot] = r;
            }
        }
    }
    let [(tp, hp, lp), (ts, hs, ls), (tq, hq, lq), (tr, hr, lr), (tb, hb, lb)] = best;
    let ran = |t: f64| t < f64::MAX;
    for (letter, name, t, h, l) in [
        ('b', "plaintext scan_parquet", tp, hp, &lp),
        ('a', "sealed, real engine:  ", ts, hs, &ls),
        ('c', "query service, DP:    ", tq, hq, &lq),
        ('d', "plain polars query:   ", tr, hr, &lr),
        ('e', "sealed, in the bucket:", tb, hb, &lb),
    ] {
        if ran(t) {
            println!(
                "({letter}) {name} {t:.3}s, peak RSS {} MiB   [{l}]",
                h >> 10
            );
        }
    }
    for (what, a, b, target) in [
        ("sealed/plain (the engine on plaintext)", ts, tp, ""),
        ("service/plain", tq, tp, ""),
        ("service/plain-query", tq, tr, " (target <= 1.15)"),
        ("sealed/plain-query", ts, tr, " (target <= 1.2)"),
        ("bucket/directory (the same run)", tb, ts, ""),
    ] {
        if ran(a) && ran(b) {
            println!("ratio {what} = {:.3}{target}", a / b);
        }
    }
    Ok(())
}
