//! One, two and three intakes on PostgreSQL + S3, the same load generator, and the cost of each
//! stage a donation passes through.
//!
//! Each intake is its own `datadonor-intake serve` process: a sequencer (ledger in PostgreSQL,
//! batches in S3) and 0, 1 or 2 frontends made by `init-frontend`. The load generator spreads
//! its TLS 1.3 clients evenly over the N intakes' donation endpoints and reports donations/s,
//! p50 and p99. Then, in this process and on one core, the cost of each stage: the frontend's
//! HPKE open; the sequencer's checks of a forwarded payload (manifest signature, rows), its
//! Parquet and sealing of a group, its receipt signature; one group commit to PostgreSQL and one
//! batch `PUT` to S3. From those it prints where a deployment saturates.
//!
//! Needs the servers of `scripts/storage-servers.sh` (their variables in the environment):
//!
//! `cargo bench -p datadonor-intake --bench scale_out -- [--clients N] [--donations N] [--rows N]`

mod load;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datadonor_intake::config::{
    BatchBackend, LedgerBackend, PostgresConfig, S3Config, StorageConfig,
};
use datadonor_intake::testkit::{self, DonationBuilder};
use load::run_load;

struct Args {
    clients: usize,
    donations: usize,
    rows: usize,
}

fn args() -> Args {
    let mut a = Args {
        clients: 48,
        donations: 1500,
        rows: 50,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).and_then(|s| s.parse::<usize>().ok());
        match (v[i].as_str(), next) {
            ("--clients", Some(n)) => a.clients = n.max(1),
            ("--donations", Some(n)) => a.donations = n.max(1),
            ("--rows", Some(n)) => a.rows = n.max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run `eval \"$(scripts/storage-servers.sh start | grep export)\"` first")
    })
}

/// An intake process; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on https://")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .parse()?;
    Ok((Proc(child), addr))
}

fn per_us(t: Instant, n: usize) -> f64 {
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Costs of each stage, one core, in this process.
struct Stages {
    open_us: f64,
    check_us: f64,
    seal_us: f64,
    receipt_us: f64,
    lookup_ms: f64,
    commit_ms: f64,
    put_ms: f64,
}

fn stages(
    dir: &Path,
    cfg: &datadonor_intake::Config,
    bodies: &[Vec<u8>],
    pg: PostgresConfig,
    s3: &S3Config,
) -> Result<Stages> {
    use arrow::array::{RecordBatch, StringArray};
    use datadonor_intake::seal::{rows_to_parquet, seal_batch, VaultKey};
    use datadonor_intake::store::{BatchRef, BatchStore, LedgerStore};
    use datadonor_intake::validate::{check_payload, open_donation, sha256};
    use datadonor_schemas::time::Clock;
    let now = datadonor_schemas::time::SystemClock.now();
    let keys = datadonor_intake::keys::TransportKeys::load(dir, 86_400, now)?;
    let studies = datadonor_intake::studies::StudyRegistry::load(
        &dir.join("studies"),
        &cfg.studies.trusted_signers,
    )?;
    let n = bodies.len().min(1000);
    let t = Instant::now();
    let mut payloads = Vec::with_capacity(n);
    for b in &bodies[..n] {
        payloads.push(
            open_donation(b, &keys, now).map_err(|p| anyhow::anyhow!("open refused: {p:?}"))?,
        );
    }
    let open_us = per_us(t, n);
    let t = Instant::now();
    let mut validated = Vec::with_capacity(n);
    for (p, b) in payloads.iter().zip(bodies) {
        validated.push(
            check_payload(
                p,
                sha256(b),
                &studies,
                now,
                cfg.limits.max_rows_per_donation,
            )
            .map_err(|p| anyhow::anyhow!("check refused: {p:?}"))?,
        );
    }
    let check_us = per_us(t, n);
    let (_, vault_pk) = datadonor_schemas::envelope::HpkePrivateKey::generate();
    let vault = VaultKey {
        key_id: 1,
        public_key: vault_pk,
    };
    let t = Instant::now();
    let mut sealed = Vec::new();
    for group in validated.chunks(32) {
        let schema = group[0].study.definition.batch_schema();
        let mut batches = Vec::with_capacity(group.len());
        for d in group {
            let mut cols = d.rows.columns().to_vec();
            cols.push(Arc::new(StringArray::from(vec![
                "00112233445566778899aabbccddeeff";
                d.rows.num_rows()
            ])));
            batches.push(RecordBatch::try_new(schema.clone(), cols)?);
        }
        let parquet = rows_to_parquet(&schema, &batches)?;
        sealed.push(seal_batch(
            group[0].study.definition.id.as_str(),
            [0u8; 16],
            now,
            &vault,
            &parquet,
        )?);
    }
    let seal_us = per_us(t, n);
    let signer = datadonor_schemas::signing::SigningKey::generate()?;
    let t = Instant::now();
    for p in &payloads {
        std::hint::black_box(signer.sign_raw(&p.idempotency_key));
    }
    let receipt_us = per_us(t, n);

    // One group as the committer makes it, to a fresh table: the lookup of its keys, then the
    // append of 64 donations' entries (a new consent and a donation each) with their index rows:
    // a full group at the default `commit.group_max_donations`.
    let table = format!("stage_{:016x}", rand::random::<u64>());
    let store =
        datadonor_intake::store_pg::PgLedgerStore::open(&datadonor_intake::store_pg::PgOptions {
            url: pg.url.clone().context("no url")?,
            table,
            ca_cert: None,
            lock_wait: Duration::from_secs(10),
        })?;
    store.recover()?;
    let idx = store
        .as_indexed()
        .context("the PostgreSQL store keeps indexes")?;
    let commits = 100usize;
    let groups: Vec<(datadonor_intake::store::Lookup, Vec<Vec<u8>>)> = (0..commits)
        .map(|g| {
            let mut q = datadonor_intake::store::Lookup::default();
            let mut entries = Vec::with_capacity(128);
            for d in validated.iter().cycle().skip(g * 64).take(64) {
                let m = &d.manifest.body;
                let study = d.study.definition.id.clone();
                let mut key = [0u8; 16];
                rand::Rng::fill(&mut rand::thread_rng(), &mut key);
                let mut record = [0u8; 16];
                rand::Rng::fill(&mut rand::thread_rng(), &mut record);
                q.donations.push(key);
                q.consent_records.push((study.clone(), record));
                q.consents.push((study.clone(), m.pseudonym));
                let mut manifest = m.clone();
                manifest.record_id = record;
                entries.push(
                    datadonor_schemas::ledger::LedgerEntry::consent_granted(
                        &manifest,
                        d.manifest.digest(),
                        now,
                    )
                    .to_bytes(),
                );
                entries.push(
                    datadonor_schemas::ledger::LedgerEntry::DonationAccepted {
                        time: now,
                        study_id: study,
                        pseudonym: m.pseudonym,
                        consent_record_id: record,
                        idempotency_key: key,
                        envelope_sha256: d.envelope_sha256,
                        rows: d.rows.num_rows() as u32,
                        batch_id: hex::encode(key),
                    }
                    .to_bytes(),
                );
            }
            (q, entries)
        })
        .collect();
    let (mut lookup_s, mut append_s) = (0.0, 0.0);
    for (q, entries) in &groups {
        let t = Instant::now();
        std::hint::black_box(idx.lookup(q)?);
        lookup_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        store.append(entries)?;
        append_s += t.elapsed().as_secs_f64();
    }
    let lookup_ms = lookup_s * 1e3 / commits as f64;
    let commit_ms = append_s * 1e3 / commits as f64;
    // One batch PUT of a group's sealed batch (32 donations).
    let mut s3 = s3.clone();
    s3.prefix = format!("stage-{:016x}", rand::random::<u64>());
    let bucket = datadonor_intake::store_s3::S3BatchStore::open(&s3)?;
    let puts = 50;
    let t = Instant::now();
    for _ in 0..puts {
        let mut id = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut id);
        bucket.put(
            &BatchRef {
                study: "t2d-dk".into(),
                batch_id: id,
            },
            &sealed[0],
        )?;
    }
    let put_ms = t.elapsed().as_secs_f64() * 1e3 / puts as f64;
    Ok(Stages {
        open_us,
        check_us,
        seal_us,
        receipt_us,
        lookup_ms,
        commit_ms,
        put_ms,
    })
}

fn main() -> Result<()> {
    let a = args();
    let pg_url = env("DATADONOR_TEST_POSTGRES")?;
    let s3 = S3Config {
        bucket: "datadonor".into(),
        endpoint: Some(env("DATADONOR_TEST_S3")?),
        region: Some("us-east-1".into()),
        prefix: format!("bench-{:016x}", rand::random::<u64>()),
        allow_http: true,
        access_key_id: Some(env("DATADONOR_TEST_S3_ACCESS_KEY")?),
        secret_access_key: Some(env("DATADONOR_TEST_S3_SECRET_KEY")?),
        retry_timeout_secs: datadonor_intake::config::DEFAULT_S3_RETRY_TIMEOUT_SECS,
    };
    let pg = PostgresConfig {
        url: Some(pg_url),
        table: format!("bench_{:016x}", rand::random::<u64>()),
        ca_cert: None,
        lock_wait_secs: 10,
    };
    let root = tempfile::tempdir()?;
    let seq_dir = root.path().join("sequencer");
    let mut cfg = testkit::init_test_dir(&seq_dir)?;
    cfg.data_dir = ".".into();
    cfg.storage = StorageConfig {
        ledger: LedgerBackend::Postgres,
        batches: BatchBackend::S3,
        postgres: Some(pg.clone()),
        s3: Some(s3.clone()),
    };
    std::fs::write(seq_dir.join("config.toml"), cfg.to_toml())?;
    let cfg = datadonor_intake::Config::load_dir(&seq_dir)?;
    let study = testkit::load_study(&seq_dir, "t2d-dk")?;
    let hpke = testkit::current_hpke_key(&seq_dir)?;
    let rounds: Vec<Arc<Vec<Vec<u8>>>> = (0..3)
        .map(|_| {
            (0..a.donations)
                .map(|_| {
                    let mut b = DonationBuilder::new(&study, hpke);
                    b.n_rows = a.rows;
                    Ok(b.build()?.envelope)
                })
                .collect::<Result<Vec<_>>>()
                .map(Arc::new)
        })
        .collect::<Result<_>>()?;
    println!(
        "scale-out on PostgreSQL + S3: {} donations of {} rows per run, {} concurrent TLS 1.3 clients spread over the intakes; group commit at most {} donations, window {} ms",
        a.donations,
        a.rows,
        a.clients,
        cfg.commit.group_max_donations,
        cfg.commit.group_window_ms
    );
    let (_seq, seq_addr) = serve(&seq_dir)?;
    let seq_url = format!("https://127.0.0.1:{}", seq_addr.port());
    let mut fronts = Vec::new();
    let mut urls = vec![format!("{seq_url}/v1/donations")];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = testkit::https_client(&std::fs::read(seq_dir.join("tls/ca.pem"))?, None)?;
    let mut first_rate = None;
    for (n, bodies) in rounds.iter().enumerate() {
        if n > 0 {
            let d = root.path().join(format!("frontend-{n}"));
            datadonor_intake::init::init_frontend(&seq_dir, &d, vec![seq_url.clone()], None)?;
            let (p, addr) = serve(&d)?;
            urls.push(format!("https://127.0.0.1:{}/v1/donations", addr.port()));
            fronts.push(p);
        }
        // Warm each endpoint's connections (not counted).
        let warm = Arc::new(bodies[..a.clients.min(bodies.len())].to_vec());
        let warm_rest = Arc::new(bodies[a.clients.min(bodies.len())..].to_vec());
        rt.block_on(run_load(client.clone(), urls.clone(), warm, a.clients))?;
        let r = rt.block_on(run_load(client.clone(), urls.clone(), warm_rest, a.clients))?;
        let base = *first_rate.get_or_insert(r.rate());
        println!(
            "{} intake(s) (sequencer{}): {:>6} ok  {:>7.1} donations/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({:.2}x one intake)",
            n + 1,
            match n {
                0 => String::new(),
                k => format!(" + {k} frontend(s)"),
            },
            r.ok,
            r.rate(),
            r.pct_ms(0.5),
            r.pct_ms(0.99),
            r.rate() / base
        );
    }
    drop(fronts);
    let s = stages(&seq_dir, &cfg, &rounds[0], pg, &s3)?;
    println!(
        "stages, one core: frontend HPKE open {:.1} us; sequencer payload checks (manifest signature, rows) {:.1} us, Parquet + seal in groups of 32 {:.1} us, receipt signature {:.1} us; one group of 64 donations in PostgreSQL: the lookup of its keys {:.2} ms, the append of its 128 entries with their index rows and Merkle nodes {:.2} ms; one batch PUT to S3 {:.2} ms",
        s.open_us, s.check_us, s.seal_us, s.receipt_us, s.lookup_ms, s.commit_ms, s.put_ms
    );
    let seq_cpu_us = s.check_us + s.seal_us + s.receipt_us;
    let group = cfg.commit.group_max_donations as f64;
    let io_ms = s.lookup_ms + s.commit_ms + s.put_ms;
    // The committer is one thread: per full group it seals, PUTs, commits, then moves on.
    let committer = group / (group * s.seal_us / 1e6 + io_ms / 1e3);
    println!(
        "model: a sequencer spends {seq_cpu_us:.0} us of CPU per donation ({:.0} donations/s per core); its one committer thread seals a full group of {group:.0} in {:.2} ms and waits {io_ms:.2} ms on PostgreSQL (lookup, append) and S3, so it passes at most {committer:.0} donations/s whatever the cores; each frontend core opens {:.0} envelopes/s",
        1e6 / seq_cpu_us,
        group * s.seal_us / 1e3,
        1e6 / s.open_us
    );
    Ok(())
}
