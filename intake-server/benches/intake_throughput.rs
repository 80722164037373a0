//! Intake throughput with durable acknowledgement, against a ceiling measured in the same run.
//!
//! Drives a running intake over TLS 1.3 with N concurrent clients sending realistic donations
//! (50 rows each by default). In the same run, the same load goes to two endpoints of the same
//! stack (tokio-rustls, hyper-util auto, axum), served in this process with the same TLS
//! certificate:
//!
//! * the bare endpoint only reads the body and answers 200 (the cost of TLS and HTTP alone);
//! * the ceiling endpoint does, per request, only the public-key work the protocol makes
//!   mandatory for a donation — HPKE open of the envelope with the intake's transport key,
//!   Ed25519 verification of the manifest, one Ed25519 signature standing for the receipt — and
//!   nothing else (no row decoding or checks, no Parquet, no sealing, no ledger, no fsync).
//!
//! Prints donations/s, p50 and p99 latency for each, and the ratio of the intake to the ceiling:
//! the part of what the mandatory cryptography allows that the intake achieves with everything
//! else it must do (validation, sealing, fsyncs, the ledger) on top.
//!
//! `cargo bench -p datadonor-intake --bench intake_throughput -- [--clients N] [--donations N] [--rows N]
//! [--group-max N] [--window-ms N] [--rounds N] [--only intake|ceiling]`
//!
//! With `--rounds N` the ceiling and the intake are measured N times, alternately, each round on
//! fresh donations; the figures are the medians. `--only intake` (or `ceiling`) loads that
//! endpoint alone, round after round, and nothing else: for a profiler attached to the whole run.

mod load;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::routing::post;
use axum::Router;
use datadonor_intake::testkit::{self, DonationBuilder};
use hyper_util::rt::{TokioExecutor, TokioIo};
use load::{run_load, LoadResult};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

struct Args {
    clients: usize,
    donations: usize,
    rows: usize,
    group_max: Option<usize>,
    window_ms: Option<u64>,
    rounds: usize,
    /// `--only intake` or `--only ceiling`: load that endpoint alone (no other phase, no one-core
    /// timings), for a profiler attached to the whole run.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        clients: 32,
        donations: 2000,
        rows: 50,
        group_max: None,
        window_ms: None,
        rounds: 1,
        only: None,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).and_then(|s| s.parse::<usize>().ok());
        match (v[i].as_str(), next) {
            ("--clients", Some(n)) => a.clients = n,
            ("--donations", Some(n)) => a.donations = n,
            ("--rows", Some(n)) => a.rows = n,
            ("--group-max", Some(n)) => a.group_max = Some(n),
            ("--window-ms", Some(n)) => a.window_ms = Some(n as u64),
            ("--rounds", Some(n)) => a.rounds = n.max(1),
            ("--only", _) => match v.get(i + 1).map(String::as_str) {
                Some(which @ ("intake" | "ceiling")) => a.only = Some(which.to_string()),
                _ => {
                    eprintln!("--only takes intake or ceiling");
                    std::process::exit(2);
                }
            },
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Serve `router` over TLS 1.3 with the intake's certificate, the same stack the intake uses
/// (tokio-rustls, hyper-util auto: HTTP/1.1 and HTTP/2, axum), on a free loopback port.
async fn serve_endpoint(
    cert: &std::path::Path,
    key: &std::path::Path,
    router: Router,
) -> Result<SocketAddr> {
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("no key")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let router = router.layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        router.clone().oneshot(req.map(axum::body::Body::new))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The bare endpoint: reads the body, answers 200 with its length.
fn bare_router() -> Router {
    Router::new().route(
        "/v1/donations",
        post(|body: axum::body::Bytes| async move { format!("{}", body.len()) }),
    )
}

/// What the ceiling endpoint holds: the intake's transport keys (loaded from its data directory
/// as the intake loads them) and an Ed25519 key standing for the ledger key.
struct CeilingKeys {
    transport: datadonor_intake::keys::TransportKeys,
    receipt_key: datadonor_schemas::signing::SigningKey,
    clock: datadonor_schemas::time::SystemClock,
}

/// The mandatory public-key work of one donation and nothing else: parse the envelope, HPKE-open
/// it with the transport key it names, verify the manifest's Ed25519 signature (and parse it, as
/// every verifier does after checking), sign a receipt-sized message. Answers the signature.
fn ceiling_work(keys: &CeilingKeys, body: &[u8]) -> Result<[u8; 64], http::StatusCode> {
    use datadonor_schemas::consent::open_manifest;
    use datadonor_schemas::envelope::Envelope;
    use datadonor_schemas::signing::{signed_bytes, Context};
    use datadonor_schemas::time::Clock;
    let bad = http::StatusCode::BAD_REQUEST;
    let env = Envelope::parse(body).map_err(|_| bad)?;
    let key = keys
        .transport
        .lookup(env.key_id, keys.clock.now())
        .ok_or(bad)?;
    let payload = env.open(&key.private_key).map_err(|_| bad)?;
    let manifest = open_manifest(&payload.manifest).map_err(|_| bad)?;
    // A receipt names the entry (with the manifest digest) and carries the checkpoint; its signed
    // payload is of this order of size.
    let mut receipt = Vec::with_capacity(RECEIPT_PAYLOAD_LEN);
    receipt.extend_from_slice(&manifest.digest());
    receipt.resize(RECEIPT_PAYLOAD_LEN, 0x5a);
    Ok(keys
        .receipt_key
        .sign_raw(&signed_bytes(Context::Receipt, &receipt)))
}

/// Length of the payload the ceiling signs per donation (a receipt's signed JSON is about this).
const RECEIPT_PAYLOAD_LEN: usize = 700;

/// The ceiling endpoint: [`ceiling_work`] inline on the request's task (no thread hand-off).
fn ceiling_router(keys: Arc<CeilingKeys>) -> Router {
    Router::new().route(
        "/v1/donations",
        post(move |body: axum::body::Bytes| {
            let keys = keys.clone();
            async move {
                match ceiling_work(&keys, &body) {
                    Ok(sig) => Ok(hex::encode(sig)),
                    Err(code) => Err(code),
                }
            }
        }),
    )
}

/// The public-key operations every accepted donation needs, timed one at a time on one thread
/// over the same envelopes: HPKE open (X25519 decapsulation), the manifest's Ed25519
/// verification, and the receipt's Ed25519 signature. With the measured cost of a bare request
/// (2 cores / bare throughput, client and server together) this bounds the ratio any intake
/// doing this work could reach on this machine.
fn crypto_floor(dir: &std::path::Path, bodies: &[Vec<u8>], bare_rate: f64) -> Result<()> {
    use datadonor_schemas::consent::open_manifest;
    use datadonor_schemas::envelope::Envelope;
    let keys = datadonor_intake::keys::TransportKeys::load(dir, 86_400, i64::MAX / 4)
        .or_else(|_| datadonor_intake::keys::TransportKeys::load(dir, 86_400, 0))?;
    let n = bodies.len().min(2000);
    let t = Instant::now();
    let mut payloads = Vec::with_capacity(n);
    for b in &bodies[..n] {
        let env = Envelope::parse(b)?;
        let key = keys
            .all()
            .iter()
            .find(|k| k.info.key_id == env.key_id)
            .context("no transport key")?;
        payloads.push(env.open(&key.private_key)?);
    }
    let open_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for p in &payloads {
        open_manifest(&p.manifest)?;
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let signer = datadonor_schemas::signing::SigningKey::generate()?;
    let msg = vec![0x5a_u8; 600];
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(signer.sign_raw(&msg));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let floor_us = open_us + verify_us + sign_us;
    let bare_us = 2.0e6 / bare_rate;
    println!(
        "per donation, one core: HPKE open {open_us:.1} us, manifest verify {verify_us:.1} us, \
         receipt sign {sign_us:.1} us = {floor_us:.1} us; a bare request costs {bare_us:.1} us of \
         the 2 cores"
    );
    println!(
        "computed ceiling (that work added to a bare request, from the timings above): {:.0} donations/s, ratio to bare {:.3}",
        2.0e6 / (bare_us + floor_us),
        bare_us / (bare_us + floor_us)
    );
    Ok(())
}

/// The intake's own work per donation besides the public-key operations, timed on one thread
/// over the same envelopes: the rest of validation (Arrow IPC decode, the study's row checks, the
/// pseudonym check, the envelope digest) and the batch of a group of 32 donations (the consent
/// column, Parquet with ZSTD, sealing to the vault key). Not timed here: the fsyncs (waiting, not
/// CPU), the ledger entries, the checkpoint and the receipt's JSON.
fn intake_work(
    dir: &std::path::Path,
    trusted: &[String],
    max_rows: usize,
    bodies: &[Vec<u8>],
) -> Result<()> {
    use arrow::array::{RecordBatch, StringArray};
    use datadonor_intake::seal::{rows_to_parquet, seal_batch, VaultKey};
    use datadonor_intake::validate::validate_donation;
    use datadonor_schemas::time::Clock;
    let keys = datadonor_intake::keys::TransportKeys::load(
        dir,
        86_400,
        datadonor_schemas::time::SystemClock.now(),
    )?;
    let studies = datadonor_intake::studies::StudyRegistry::load(&dir.join("studies"), trusted)?;
    let now = datadonor_schemas::time::SystemClock.now();
    let n = bodies.len().min(2000);
    // The public-key part alone, warm, for the difference.
    let t = Instant::now();
    for b in &bodies[..n] {
        let env = datadonor_schemas::envelope::Envelope::parse(b)?;
        let key = keys.lookup(env.key_id, now).context("no transport key")?;
        let payload = env.open(&key.private_key)?;
        std::hint::black_box(datadonor_schemas::consent::open_manifest(
            &payload.manifest,
        )?);
    }
    let crypto_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    let mut validated = Vec::with_capacity(n);
    for b in &bodies[..n] {
        validated.push(
            validate_donation(b, &keys, &studies, now, max_rows)
                .map_err(|p| anyhow::anyhow!("validation refused a donation: {p:?}"))?,
        );
    }
    let validate_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let (_, vault_pk) = datadonor_schemas::envelope::HpkePrivateKey::generate();
    let vault = VaultKey {
        key_id: 1,
        public_key: vault_pk,
    };
    let t = Instant::now();
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
        std::hint::black_box(seal_batch(
            group[0].study.definition.id.as_str(),
            [0u8; 16],
            now,
            &vault,
            &parquet,
        )?);
    }
    let batch_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "per donation, one core: validation {validate_us:.1} us, of which HPKE open and manifest \
         verification {crypto_us:.1} us and the rest (rows, checks, digest) {:.1} us; consent \
         column, Parquet (ZSTD) and sealing in groups of 32 {batch_us:.1} us",
        validate_us - crypto_us
    );
    Ok(())
}

/// One phase of load on `urls`: its result, the CPU the process spent on it (seconds), and the
/// commit groups the intake at `intake` made meanwhile (read from its `/metrics` outside the
/// timing).
async fn phase(
    c: &reqwest::Client,
    urls: Vec<String>,
    intake: SocketAddr,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> Result<(LoadResult, f64, u64)> {
    let flushes = batch_flushes(c, intake).await?;
    let cpu0 = cpu_secs();
    let load = run_load(c.clone(), urls, bodies, clients).await?;
    let cpu = cpu_secs() - cpu0;
    let groups = batch_flushes(c, intake).await? - flushes;
    Ok((load, cpu, groups))
}

/// The intake's count of sealed batch files written (one per study and commit group), from its
/// `/metrics`.
async fn batch_flushes(client: &reqwest::Client, addr: SocketAddr) -> Result<u64> {
    let text = client
        .get(format!("https://localhost:{}/metrics", addr.port()))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("datadonor_batch_flushes_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("no datadonor_batch_flushes_total in /metrics")
}

fn report(name: &str, r: &LoadResult) {
    println!(
        "{name:<34} {:>6} ok  {:>9.1} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        r.ok,
        r.rate(),
        r.pct_ms(0.50),
        r.pct_ms(0.99)
    );
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (fields 14 and 15,
/// in USER_HZ = 100 ticks per second). The load generator, the endpoints and the intake all
/// run in this process, so a phase's CPU is everything the machine spent on it.
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU per request of a phase and how many of the cores it kept busy.
fn cpu_report(name: &str, r: &LoadResult, cpu: f64) -> f64 {
    let per_us = cpu * 1e6 / r.ok.max(1) as f64;
    let wall = r.ok as f64 / r.rate().max(f64::MIN_POSITIVE);
    println!(
        "{name:<34} CPU {per_us:>7.1} us per request (load generator included), {:.2} cores busy",
        cpu / wall
    );
    per_us
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let mut cfg = testkit::init_test_dir(dir.path())?;
        if let Some(n) = a.group_max {
            cfg.commit.group_max_donations = n;
        }
        if let Some(ms) = a.window_ms {
            cfg.commit.group_window_ms = ms;
        }
        println!(
            "group commit: at most {} donations per group, window {} ms",
            cfg.commit.group_max_donations, cfg.commit.group_window_ms
        );
        let cert = cfg.path(&cfg.server.tls_cert);
        let key = cfg.path(&cfg.server.tls_key);
        let grace = cfg.keys.transport_key_grace_secs;
        let trusted = cfg.studies.trusted_signers.clone();
        let max_rows = cfg.limits.max_rows_per_donation;
        let running = datadonor_intake::start(cfg).await?;
        let ca = std::fs::read(running.ca_pem_path())?;
        let study = testkit::load_study(dir.path(), "t2d-dk")?;
        let hpke = testkit::current_hpke_key(dir.path())?;
        let t = Instant::now();
        let mut rounds = Vec::with_capacity(a.rounds);
        for _ in 0..a.rounds {
            let mut bodies = Vec::with_capacity(a.donations);
            for _ in 0..a.donations {
                let mut b = DonationBuilder::new(&study, hpke);
                b.n_rows = a.rows;
                bodies.push(b.build()?.envelope);
            }
            rounds.push(Arc::new(bodies));
        }
        let bodies = rounds[0].clone();
        let mean_len = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len().max(1);
        println!(
            "intake throughput: {} donations of {} rows (envelope ~{} bytes), {} concurrent TLS 1.3 clients, {} round(s); prepared in {:.1} s",
            a.donations,
            a.rows,
            mean_len,
            a.clients,
            a.rounds,
            t.elapsed().as_secs_f64()
        );
        let bare_addr = serve_endpoint(&cert, &key, bare_router()).await?;
        let ceiling_keys = Arc::new(CeilingKeys {
            transport: datadonor_intake::keys::TransportKeys::load(
                dir.path(),
                grace,
                datadonor_schemas::time::Clock::now(&datadonor_schemas::time::SystemClock),
            )?,
            receipt_key: datadonor_schemas::signing::SigningKey::generate()?,
            clock: datadonor_schemas::time::SystemClock,
        });
        let ceiling_addr = serve_endpoint(&cert, &key, ceiling_router(ceiling_keys)).await?;
        let url = |addr: SocketAddr| vec![format!("https://localhost:{}/v1/donations", addr.port())];
        let c = testkit::https_client(&ca, None)?;
        if let Some(which) = &a.only {
            let addr = if which == "intake" {
                running.addr()
            } else {
                ceiling_addr
            };
            for (r, bodies) in rounds.iter().enumerate() {
                let (load, cpu, groups) =
                    phase(&c, url(addr), running.addr(), bodies.clone(), a.clients).await?;
                println!("round {}:", r + 1);
                report(which, &load);
                cpu_report(which, &load, cpu);
                if groups > 0 {
                    println!(
                        "intake commit groups: {groups}, {:.1} donations per group on average",
                        load.ok as f64 / groups as f64
                    );
                }
            }
            running.shutdown().await?;
            return Ok(());
        }
        // Warm the bare endpoint's and the ceiling's connection pools (not counted); the
        // intake's first round opens its connections within the measurement, as a real intake
        // would after a restart.
        let warm: Arc<Vec<Vec<u8>>> = Arc::new(vec![b"warm".to_vec(); a.clients]);
        run_load(c.clone(), url(bare_addr), warm, a.clients).await?;
        let warm_ceiling = Arc::new(bodies[..a.clients.min(bodies.len())].to_vec());
        run_load(c.clone(), url(ceiling_addr), warm_ceiling, a.clients).await?;
        let (bare, bare_cpu, _) =
            phase(&c, url(bare_addr), running.addr(), bodies.clone(), a.clients).await?;
        report("bare TLS endpoint (200 only)", &bare);
        cpu_report("bare", &bare, bare_cpu);
        let (mut ceiling_rates, mut intake_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut cpu_ratios = Vec::new();
        for (r, bodies) in rounds.iter().enumerate() {
            let (ceiling, ceiling_cpu, _) =
                phase(&c, url(ceiling_addr), running.addr(), bodies.clone(), a.clients).await?;
            let (intake, intake_cpu, groups) = phase(
                &c,
                url(running.addr()),
                running.addr(),
                bodies.clone(),
                a.clients,
            )
            .await?;
            if a.rounds > 1 {
                println!("round {}:", r + 1);
            }
            report("ceiling (HPKE open, verify, sign)", &ceiling);
            report("intake (durable receipts)", &intake);
            let c_us = cpu_report("ceiling", &ceiling, ceiling_cpu);
            let i_us = cpu_report("intake", &intake, intake_cpu);
            println!(
                "CPU per donation ceiling/intake: {:.3} (the throughput ratio CPU alone allows \
                 when both keep the cores busy)",
                c_us / i_us
            );
            cpu_ratios.push(c_us / i_us);
            println!(
                "intake commit groups: {groups}, {:.1} donations per group on average",
                intake.ok as f64 / groups.max(1) as f64
            );
            println!(
                "ratio intake/ceiling: {:.3} (target >= 0.8); intake/bare {:.3}; ceiling/bare {:.3}",
                intake.rate() / ceiling.rate(),
                intake.rate() / bare.rate(),
                ceiling.rate() / bare.rate()
            );
            ceiling_rates.push(ceiling.rate());
            intake_rates.push(intake.rate());
            ratios.push(intake.rate() / ceiling.rate());
        }
        if a.rounds > 1 {
            println!(
                "median of {} rounds: ceiling {:.1} donations/s, intake {:.1} donations/s, ratio intake/ceiling {:.3} (min {:.3}, max {:.3})",
                a.rounds,
                median(ceiling_rates),
                median(intake_rates),
                median(ratios.clone()),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            println!(
                "median CPU per donation ceiling/intake: {:.3}",
                median(cpu_ratios)
            );
        }
        running.shutdown().await?;
        crypto_floor(dir.path(), &bodies, bare.rate())?;
        intake_work(dir.path(), &trusted, max_rows, &bodies)?;
        Ok(())
    })
}
