//! The intake on a large ledger: start-up time, memory and proof latency as the number of donors
//! grows.
//!
//! For each N of `--donors` (default 10,000, 100,000 and 1,000,000):
//!
//! 1. a fresh data directory is made as `init` makes one (the crate's `testkit::init_test_dir`),
//!    and N `consent_granted` entries, one per synthetic donor (its own Ed25519 key, pseudonym
//!    and consent record id, a manifest for the example study signed by that key, the manifest's
//!    digest), are written straight into the ledger file through the intake's own
//!    `IndexedLocalLedger::append` (one write and one `fdatasync` per group of `--group`
//!    entries, then the group indexed), not donated over HTTPS. The checkpoint the intake will publish is signed here
//!    with the intake's [`LedgerSigner`] over the same leaves, so the intake's answer can be
//!    compared with it byte for byte. Generation is timed on its own;
//! 2. the real `datadonor-intake serve` is started as a child process on that directory, and
//!    start-up is timed until it answers its first HTTPS request (`GET /v1/ledger/checkpoint`,
//!    which must be that very checkpoint); its resident memory (`VmRSS`) and peak (`VmHWM`) are
//!    read from `/proc/<pid>/status` after start-up and again after the proof requests;
//! 3. `--proofs` inclusion proofs of random entries are requested over HTTPS from the public
//!    `GET /v1/ledger/inclusion?index=I&size=N` by `--clients` concurrent clients, and every
//!    answer is verified against the served checkpoint's root (RFC 9162); a few entries are also
//!    read back through the auditor's `GET /v1/ledger/entries` and matched with their leaves;
//!    then the whole ledger read through it in pages of 1,000, as the auditor reads it;
//! 4. after the intake has stopped, the two halves of its recovery are timed in this process on
//!    the same ledger: opening the store (the ledger file with its on-disk index, which reads
//!    only what lies past the index), then rebuilding the state from the stored tree's right
//!    edge ([`LedgerState::recover_indexed`]); then how long indexing the whole file from
//!    scratch takes (a start with the index lost).
//!
//! With `--backend postgres` (the variables of `scripts/storage-servers.sh` in the environment)
//! the entries are written through the PostgreSQL store's own append instead, which keeps the
//! indexes and Merkle nodes in the database, and the intake serves from a fresh table; step 4
//! then times the indexed recovery (the tree's right edge only).
//!
//! Prints one line per N and, at the end, how memory grows per 1,000 donors between the smallest
//! and the largest N. `--keep DIR` generates the largest N in `DIR` (which must not exist yet)
//! and leaves it there; its ledger is `DIR/ledger/ledger.log`.
//!
//! `cargo bench -p datadonor-intake --bench ledger_scale -- [--donors 10000,100000,1000000]
//! [--proofs 2000] [--clients 4] [--group 50000] [--dir /var/tmp] [--keep DIR]
//! [--backend file|postgres]`

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use datadonor_intake::config::Config;
use datadonor_intake::init::ledger_path;
use datadonor_intake::ledger::{LedgerSigner, LedgerState};
use datadonor_intake::store::{LedgerStore, LocalLedgerStore};
use datadonor_intake::studies::LoadedStudy;
use datadonor_intake::testkit;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{leaf_hash, verify_inclusion, MerkleLog, ProofAnswer};
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::{Clock, SystemClock, UnixSeconds};
use rand::Rng as _;

/// The configuration the benchmark serves with, beside `config.toml` (which stays as `init`
/// wrote it): a free port and public reads not rate limited, since every request comes from
/// one address.
const BENCH_CONFIG: &str = "ledger-scale.toml";

/// Entries read back through the auditor endpoint and matched with their leaves.
const ENTRIES_CHECKED: usize = 5;

struct Args {
    donors: Vec<usize>,
    proofs: usize,
    clients: usize,
    group: usize,
    dir: PathBuf,
    keep: Option<PathBuf>,
    /// The PostgreSQL URL when `--backend postgres`.
    postgres: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        donors: vec![10_000, 100_000, 1_000_000],
        proofs: 2000,
        clients: 4,
        group: 50_000,
        dir: PathBuf::from("/var/tmp"),
        keep: None,
        postgres: None,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let value = v.get(i + 1).cloned();
        let number = || -> Result<usize> {
            let s = value.clone().context("a number is missing")?;
            Ok(s.replace('_', "").parse()?)
        };
        match v[i].as_str() {
            "--donors" => {
                a.donors = value
                    .clone()
                    .context("--donors wants a list such as 10000,100000")?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--donors wants a list such as 10000,100000")?;
            }
            "--proofs" => a.proofs = number()?,
            "--clients" => a.clients = number()?.max(1),
            "--group" => a.group = number()?.max(1),
            "--dir" => a.dir = PathBuf::from(value.clone().context("--dir wants a directory")?),
            "--keep" => a.keep = Some(PathBuf::from(value.clone().context("--keep wants DIR")?)),
            "--backend" => match value.as_deref() {
                Some("file") => a.postgres = None,
                Some("postgres") => {
                    a.postgres = Some(std::env::var("DATADONOR_TEST_POSTGRES").context(
                        "--backend postgres needs DATADONOR_TEST_POSTGRES (scripts/storage-servers.sh start)",
                    )?)
                }
                _ => bail!("--backend wants file or postgres"),
            },
            // `cargo bench` passes `--bench`; anything else unknown is ignored the same way.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a.donors.sort_unstable();
    a.donors.dedup();
    ensure!(!a.donors.is_empty(), "--donors is empty");
    if let Some(k) = &a.keep {
        ensure!(
            !k.exists(),
            "{} exists; --keep wants a new directory",
            k.display()
        );
    }
    Ok(a)
}

/// A data directory being measured: removed when dropped unless kept.
struct StateDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What generation produced: the ledger key's view of the tree the intake must serve.
struct Generated {
    elapsed: Duration,
    log: MerkleLog,
    signer: LedgerSigner,
    expected_note: String,
    ledger_bytes: u64,
    auditor_token: String,
}

/// One synthetic donor's `consent_granted` entry, built as the intake builds it from a verified
/// manifest: a fresh donor key signs a manifest for the study (random pseudonym and consent
/// record id), whose signed payload's SHA-256 the entry records.
fn donor_entry(study: &LoadedStudy, now: UnixSeconds) -> Result<Vec<u8>> {
    let key = SigningKey::generate()?;
    let manifest = testkit::manifest_for(study, &key, testkit::random_pseudonym(), now);
    let signed = manifest.sign(&key);
    Ok(LedgerEntry::consent_granted(&manifest, signed.payload_digest(), now).to_bytes())
}

/// `init` a directory and write `donors` entries into its ledger in groups (into a fresh
/// PostgreSQL table when `postgres` is given, which the configuration then names).
fn generate(dir: &Path, donors: usize, group: usize, postgres: Option<&str>) -> Result<Generated> {
    let mut config = testkit::init_test_dir(dir)?;
    // Served from a file of its own beside `config.toml`; `data_dir` is that file's directory.
    config.data_dir = PathBuf::from(".");
    let pg = postgres.map(|url| datadonor_intake::store_pg::PgOptions {
        url: url.to_string(),
        table: format!("scale_{:016x}", rand::random::<u64>()),
        ca_cert: None,
        lock_wait: Duration::from_secs(10),
    });
    if let Some(o) = &pg {
        config.storage.ledger = datadonor_intake::config::LedgerBackend::Postgres;
        config.storage.postgres = Some(datadonor_intake::config::PostgresConfig {
            url: Some(o.url.clone()),
            table: o.table.clone(),
            ca_cert: None,
            lock_wait_secs: 10,
        });
    }
    std::fs::write(dir.join(BENCH_CONFIG), config.to_toml())?;
    let config = Config::load(&dir.join(BENCH_CONFIG))?;
    let study = testkit::load_study(dir, "t2d-dk")?;
    let signer = LedgerSigner::new(
        datadonor_intake::keys::load_ledger_key(dir)?,
        &config.ledger.origin,
    )?;
    let auditor_token = std::fs::read_to_string(dir.join("auditor.token"))?
        .trim()
        .to_string();

    let t = Instant::now();
    let local = LocalLedgerStore::open(&ledger_path(dir))?;
    let init_records = local.recover()?;
    let store: Box<dyn LedgerStore> = match &pg {
        Some(o) => {
            let s = datadonor_intake::store_pg::PgLedgerStore::open(o)?;
            // As the intake seeds an empty table: the records init wrote.
            s.append(&init_records)?;
            Box::new(s)
        }
        None => {
            drop(local);
            // The intake's own store: the file and its on-disk index, as `serve` opens them.
            Box::new(datadonor_intake::store_index::IndexedLocalLedger::open(
                &ledger_path(dir),
            )?)
        }
    };
    let mut log = MerkleLog::new();
    let mut record_bytes = 0u64;
    for r in &init_records {
        log.push(leaf_hash(r));
        record_bytes += r.len() as u64;
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let now = SystemClock.now();
    let mut written = 0;
    while written < donors {
        let n = group.min(donors - written);
        let per_thread = n.div_ceil(threads);
        let parts: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let count = per_thread.min(n.saturating_sub(k * per_thread));
                    let study = &study;
                    s.spawn(move || {
                        (0..count)
                            .map(|_| donor_entry(study, now))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a generating thread panicked"))?
                })
                .collect::<Result<_>>()
        })?;
        let entries: Vec<Vec<u8>> = parts.into_iter().flatten().collect();
        for e in &entries {
            log.push(leaf_hash(e));
            record_bytes += e.len() as u64;
        }
        // The committer's own durable append: one write and one fdatasync for the group.
        store.append(&entries)?;
        written += entries.len();
    }
    drop(store);
    let expected_note = signer.checkpoint(log.size(), log.root())?;
    let elapsed = t.elapsed();
    let ledger_bytes = match &pg {
        None => std::fs::metadata(ledger_path(dir))?.len(),
        // The records' bytes as stored in the table (without PostgreSQL's own overhead).
        Some(_) => record_bytes,
    };
    Ok(Generated {
        elapsed,
        log,
        signer,
        expected_note,
        ledger_bytes,
        auditor_token,
    })
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    Ok(testkit::https_client(
        ca_pem,
        Some(Duration::from_secs(30)),
    )?)
}

/// The intake as a child process; stopped (SIGTERM, then SIGKILL) when dropped.
struct IntakeChild {
    child: Child,
}

impl IntakeChild {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ask it to stop as an operator would (SIGTERM), and wait.
    fn stop(mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                ensure!(s.success(), "the intake exited with {s}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the intake did not stop within 30 s of SIGTERM")
    }
}

impl Drop for IntakeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start-up of the intake, as measured.
struct Startup {
    /// Until it printed its bound address (the data directory opened and recovered).
    listening: Duration,
    /// Until its first HTTPS answer.
    first_answer: Duration,
    port: u16,
    checkpoint: String,
}

/// Spawn `datadonor-intake serve` on `dir` and wait for its first HTTPS answer.
async fn start_intake(dir: &Path, log: &Path) -> Result<(IntakeChild, Startup)> {
    let stderr = std::fs::File::create(log)?;
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_datadonor-intake"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join(BENCH_CONFIG))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("starting datadonor-intake")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let child = IntakeChild { child };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on https://") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send((Instant::now(), addr.to_string()));
                }
            }
        }
    });
    let (listened_at, addr) = tokio::time::timeout(Duration::from_secs(1800), rx)
        .await
        .context("the intake did not start within 30 min")?
        .with_context(|| format!("the intake exited before listening; see {}", log.display()))?;
    let listening = listened_at - t;
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("bad address {addr}"))?;
    let c = client(&std::fs::read(dir.join("tls/ca.pem"))?)?;
    let url = format!("https://localhost:{port}/v1/ledger/checkpoint");
    let checkpoint = loop {
        match c.get(&url).send().await {
            Ok(r) if r.status().is_success() => break r.text().await?,
            Ok(r) => bail!("the checkpoint answered {}", r.status()),
            Err(_) if t.elapsed() < Duration::from_secs(1800) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok((
        child,
        Startup {
            listening,
            first_answer: t.elapsed(),
            port,
            checkpoint,
        },
    ))
}

struct ProofRun {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl ProofRun {
    fn pct_ms(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let idx = ((l.len() as f64 - 1.0) * p).round() as usize;
        l.get(idx).copied().unwrap_or_default().as_secs_f64() * 1e3
    }
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Request inclusion proofs of `indexes` under `size` with `clients` concurrent clients;
/// returns the timings and every answer's body, in the order of `indexes`.
async fn request_proofs(
    c: &reqwest::Client,
    port: u16,
    indexes: Arc<Vec<u64>>,
    size: u64,
    clients: usize,
) -> Result<(ProofRun, Vec<Vec<u8>>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (c, indexes, next) = (c.clone(), indexes.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = indexes.get(k) else { break };
                let url = format!(
                    "https://localhost:{port}/v1/ledger/inclusion?index={index}&size={size}"
                );
                let t = Instant::now();
                let resp = c.get(&url).send().await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                let lat = t.elapsed();
                if !status.is_success() {
                    bail!("inclusion proof of {index} answered {status}");
                }
                out.push((k, lat, body.to_vec()));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut all = Vec::with_capacity(indexes.len());
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort_by_key(|(k, _, _)| *k);
    let latencies = all.iter().map(|(_, l, _)| *l).collect();
    let bodies = all.into_iter().map(|(_, _, b)| b).collect();
    Ok((ProofRun { latencies, elapsed }, bodies))
}

/// Figures of one N.
struct Figures {
    donors: usize,
    rss_after_start_kib: u64,
    rss_peak_kib: u64,
}

async fn measure(a: &Args, donors: usize, keep: Option<&Path>) -> Result<Figures> {
    let state = match keep {
        Some(p) => {
            ensure!(
                !p.exists(),
                "{} exists; --keep wants a new directory",
                p.display()
            );
            std::fs::create_dir_all(p)?;
            StateDir {
                path: p.to_path_buf(),
                keep: true,
            }
        }
        None => {
            let d = tempfile::Builder::new()
                .prefix("dd-ledger-scale-")
                .tempdir_in(&a.dir)?;
            StateDir {
                path: d.keep(),
                keep: false,
            }
        }
    };
    let dir = state.path.clone();
    let g = generate(&dir, donors, a.group, a.postgres.as_deref())?;
    let size = g.log.size();
    println!(
        "donors={donors}: generated {size} ledger entries ({} bytes, {:.0} bytes/entry) in {:.1} s, {:.0} donors/s",
        g.ledger_bytes,
        g.ledger_bytes as f64 / size as f64,
        g.elapsed.as_secs_f64(),
        donors as f64 / g.elapsed.as_secs_f64()
    );

    // The log lives outside the data directory, so a kept directory holds only what init and
    // the intake write.
    let log = a.dir.join(format!("dd-ledger-scale-intake-{donors}.log"));
    let (child, startup) = start_intake(&dir, &log).await?;
    let pid = child.pid();
    let (rss_start, hwm_start) = memory_kib(pid)?;
    ensure!(
        startup.checkpoint == g.expected_note,
        "the intake serves another checkpoint than the one signed over the generated ledger:\n{}\nexpected:\n{}",
        startup.checkpoint,
        g.expected_note
    );
    let served = datadonor_schemas::checkpoint::open(
        startup.checkpoint.as_bytes(),
        std::slice::from_ref(g.signer.verifier()),
    )?
    .checkpoint;
    ensure!(served.size == size, "served size {} != {size}", served.size);

    let c = client(&std::fs::read(dir.join("tls/ca.pem"))?)?;
    let mut rng = rand::thread_rng();
    let indexes: Arc<Vec<u64>> = Arc::new((0..a.proofs).map(|_| rng.gen_range(0..size)).collect());
    // A few warm-up requests open the clients' connections outside the measurement.
    let warm = Arc::new(indexes.iter().take(a.clients).copied().collect::<Vec<_>>());
    request_proofs(&c, startup.port, warm, size, a.clients).await?;
    let (run, bodies) = request_proofs(&c, startup.port, indexes.clone(), size, a.clients).await?;
    for (&index, body) in indexes.iter().zip(&bodies) {
        let answer = ProofAnswer::from_json(body)
            .with_context(|| format!("inclusion proof of {index} does not parse"))?;
        let leaf = g.log.leaf(index).context("no such leaf")?;
        verify_inclusion(index, size, &leaf.0, &answer.proof, &served.root.0)
            .with_context(|| format!("inclusion proof of {index} does not verify"))?;
    }
    // The leaves behind some of those proofs, read back from the intake as an auditor would.
    for &index in indexes.iter().take(ENTRIES_CHECKED) {
        let v: serde_json::Value = c
            .get(format!(
                "https://localhost:{}/v1/ledger/entries?start={index}&end={}",
                startup.port,
                index + 1
            ))
            .bearer_auth(&g.auditor_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let b64 = v["entries"][0].as_str().context("no entry")?;
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)?;
        ensure!(
            Some(leaf_hash(&bytes)) == g.log.leaf(index),
            "entry {index} is not the generated leaf"
        );
        if index > 0 {
            ensure!(
                matches!(
                    LedgerEntry::from_bytes(&bytes)?,
                    LedgerEntry::ConsentGranted { .. }
                ),
                "entry {index} is not consent_granted"
            );
        }
    }
    // The whole ledger read as an auditor or the query service reads it: pages of 1,000 entries,
    // one request at a time, every leaf checked.
    let t = Instant::now();
    let mut start = 0u64;
    while start < size {
        let end = (start + 1000).min(size);
        let v: serde_json::Value = c
            .get(format!(
                "https://localhost:{}/v1/ledger/entries?start={start}&end={end}",
                startup.port
            ))
            .bearer_auth(&g.auditor_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let page = v["entries"].as_array().context("no entries")?;
        ensure!(page.len() as u64 == end - start, "short page at {start}");
        for (i, e) in page.iter().enumerate() {
            let b64 = e.as_str().context("entry is not a string")?;
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)?;
            ensure!(
                Some(leaf_hash(&bytes)) == g.log.leaf(start + i as u64),
                "entry {} is not the generated leaf",
                start + i as u64
            );
        }
        start = end;
    }
    let read_all_s = t.elapsed().as_secs_f64();
    let (rss_end, hwm_end) = memory_kib(pid)?;
    child.stop()?;
    let _ = std::fs::remove_file(&log);

    // Where start-up goes: the intake's two recovery steps, timed here on the same ledger.
    let config = Config::load(&dir.join(BENCH_CONFIG))?;
    let (read_s, fold_s) = match &config.storage.postgres {
        Some(p) => {
            let t = Instant::now();
            let store = datadonor_intake::store_pg::PgLedgerStore::open(
                &datadonor_intake::store_pg::PgOptions {
                    url: p.url.clone().context("no url")?,
                    table: p.table.clone(),
                    ca_cert: None,
                    lock_wait: Duration::from_secs(10),
                },
            )?;
            let read_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let state = LedgerState::recover_indexed(Arc::new(store), &g.signer)?;
            ensure!(state.published_note() == g.expected_note);
            ensure!(state.held_in_memory() == 0);
            (read_s, t.elapsed().as_secs_f64())
        }
        None => {
            let t = Instant::now();
            let store =
                datadonor_intake::store_index::IndexedLocalLedger::open(&ledger_path(&dir))?;
            let read_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let state = LedgerState::recover_indexed(Arc::new(store), &g.signer)?;
            ensure!(state.published_note() == g.expected_note);
            ensure!(state.held_in_memory() == 0);
            let fold_s = t.elapsed().as_secs_f64();
            drop(state);
            // What a first start without an index costs: the whole file read and indexed.
            std::fs::remove_file(datadonor_intake::store_index::index_path(&ledger_path(
                &dir,
            )))?;
            let t = Instant::now();
            drop(datadonor_intake::store_index::IndexedLocalLedger::open(
                &ledger_path(&dir),
            )?);
            println!(
                "  indexing the whole ledger file from scratch (a first start after an upgrade, or a lost index): {:.2}s",
                t.elapsed().as_secs_f64()
            );
            (read_s, fold_s)
        }
    };

    println!(
        "donors={donors} generate={:.1}s startup={:.2}s rss_after_start={:.0}MiB rss_peak={:.0}MiB proof_p50={:.2}ms proof_p99={:.2}ms read_all_entries={read_all_s:.2}s",
        g.elapsed.as_secs_f64(),
        startup.first_answer.as_secs_f64(),
        mib(rss_start),
        mib(hwm_end),
        run.pct_ms(0.50),
        run.pct_ms(0.99),
    );
    println!(
        "  ledger_bytes={:.1}MiB entries={size} listening_after={:.2}s (recovery in this process: open the store {read_s:.2}s, rebuild the state {fold_s:.2}s) peak_during_start={:.0}MiB rss_after_proofs={:.0}MiB proofs={} clients={} {:.0} proofs/s, all verified against the served checkpoint",
        g.ledger_bytes as f64 / (1024.0 * 1024.0),
        startup.listening.as_secs_f64(),
        mib(hwm_start),
        mib(rss_end),
        run.latencies.len(),
        a.clients,
        run.rate(),
    );
    if state.keep {
        println!(
            "  kept: {} (ledger file {})",
            dir.display(),
            ledger_path(&dir).display()
        );
    }
    Ok(Figures {
        donors,
        rss_after_start_kib: rss_start,
        rss_peak_kib: hwm_end,
    })
}

fn main() -> Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "ledger scale ({}): donors {:?}, {} inclusion proofs by {} clients per N, groups of {} entries",
            if a.postgres.is_some() { "ledger in PostgreSQL" } else { "ledger file" },
            a.donors, a.proofs, a.clients, a.group
        );
        let largest = a.donors.last().copied();
        let mut figures = Vec::new();
        for &n in &a.donors {
            let keep = a.keep.as_deref().filter(|_| Some(n) == largest);
            figures.push(measure(&a, n, keep).await?);
        }
        if let (Some(first), Some(last)) = (figures.first(), figures.last()) {
            if last.donors > first.donors {
                let per_k = |from: u64, to: u64| {
                    (to as f64 - from as f64) / ((last.donors - first.donors) as f64 / 1000.0)
                };
                println!(
                    "memory growth from {} to {} donors: {:.1} KiB per 1,000 donors after start-up, {:.1} KiB per 1,000 donors at peak",
                    first.donors,
                    last.donors,
                    per_k(first.rss_after_start_kib, last.rss_after_start_kib),
                    per_k(first.rss_peak_kib, last.rss_peak_kib),
                );
            }
        }
        if let Some(k) = &a.keep {
            println!("kept data directory: {}", k.display());
        }
        Ok(())
    })
}
