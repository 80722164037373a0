//! Cost of the pseudonym per donation: the threshold evaluation (t = 2, n = 3, every instance
//! asked at once, three proofs verified, two answers combined) against the single-key baseline
//! (one evaluation, one proof), in the same run.
//!
//! Two figures each: the donor device's CPU work alone (blind, verify, combine, finalise, with
//! the instances' evaluations done in-process), and the whole round trip over HTTPS on loopback
//! (warm connections), as a donor's device pays it.
//!
//! `cargo bench -p datadonor-pseudonymiser --bench threshold_oprf` (`-- N` sets the number of
//! evaluations, default 2000).

use std::time::Instant;

use datadonor_pseudonymiser::dkg;
use datadonor_pseudonymiser::local::start_local;
use datadonor_schemas::pseudonym::Cpr;
use datadonor_schemas::threshold::{
    blind, EvaluateRequest, InstanceAnswer, InstanceInfo, PseudonymiserConfig,
};

fn per_op(total: std::time::Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

/// A configuration naming only `instances` of `full` (the baseline uses instance 1 alone as if
/// it held the whole key: its own public share is the "group key" of a 1-of-1 service).
fn single(full: &PseudonymiserConfig) -> (PseudonymiserConfig, InstanceInfo) {
    let one = full.instances[0].clone();
    let mut c = full.clone();
    c.instances = vec![one.clone()];
    c.threshold = 1;
    c.group_public_key = one.public_share;
    (c, one)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let cpr = Cpr::parse("0101801234").expect("cpr");

    // CPU only, in-process.
    let (shares, result) = dkg::run_local("bench", 3, 2).expect("ceremony");
    let endpoints: Vec<dkg::Endpoint> = (1..=3)
        .map(|i| dkg::Endpoint {
            index: i,
            url: format!("https://pseudonymiser-{i}.invalid"),
            operator: "bench".into(),
        })
        .collect();
    let config = dkg::assemble_config(&result, 1, &endpoints, None).expect("config");
    let (single_config, _) = single(&config);

    let t0 = Instant::now();
    for _ in 0..n {
        let b = blind(&cpr).expect("blind");
        let a = shares[0].evaluate(&b.blinded).expect("evaluate");
        // The single-key client verifies its one proof and finalises.
        let z = b.verify_answer(&single_config, &a).expect("proof");
        std::hint::black_box(z);
    }
    let single_cpu = t0.elapsed();
    let t0 = Instant::now();
    for _ in 0..n {
        let b = blind(&cpr).expect("blind");
        let answers: Vec<InstanceAnswer> = shares
            .iter()
            .map(|s| s.evaluate(&b.blinded).expect("evaluate"))
            .collect();
        let c = b.combine(&config, &answers, Vec::new()).expect("combine");
        std::hint::black_box(c.output.as_bytes());
    }
    let threshold_cpu = t0.elapsed();

    // Round trip over HTTPS on loopback.
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_local(dir.path(), "bench", 3, 2, None, |c| {
        c.per_address_burst = 1_000_000;
        c.per_address_per_second = 1e9;
    })
    .await
    .expect("instances");
    let mut builder = reqwest::Client::builder().https_only(true);
    for c in reqwest::Certificate::from_pem_bundle(service.ca_pem.as_bytes()).expect("ca") {
        builder = builder.add_root_certificate(c);
    }
    let http = builder.use_rustls_tls().build().expect("client");
    let ask = |url: String, blinded: [u8; 32]| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{url}/v1/evaluate"))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&EvaluateRequest { blinded }).expect("json"))
                .send()
                .await
                .expect("send");
            InstanceAnswer::from_json(&r.bytes().await.expect("body")).expect("answer")
        }
    };
    let (single_live, one) = single(&service.config);
    let rounds = (n / 4).max(50);
    // Warm the connections.
    for inst in &service.config.instances {
        let b = blind(&cpr).expect("blind");
        ask(inst.url.clone(), b.blinded).await;
    }
    let t0 = Instant::now();
    for _ in 0..rounds {
        let b = blind(&cpr).expect("blind");
        let a = ask(one.url.clone(), b.blinded).await;
        std::hint::black_box(b.verify_answer(&single_live, &a).expect("proof"));
    }
    let single_rtt = t0.elapsed();
    let t0 = Instant::now();
    for _ in 0..rounds {
        let b = blind(&cpr).expect("blind");
        let futs: Vec<_> = service
            .config
            .instances
            .iter()
            .map(|i| tokio::spawn(ask(i.url.clone(), b.blinded)))
            .collect();
        let mut answers = Vec::new();
        for f in futs {
            answers.push(f.await.expect("task"));
        }
        let c = b
            .combine(&service.config, &answers, Vec::new())
            .expect("combine");
        std::hint::black_box(c.output.as_bytes());
    }
    let threshold_rtt = t0.elapsed();
    service.shutdown().await;

    let (sc, tc) = (per_op(single_cpu, n), per_op(threshold_cpu, n));
    let (sr, tr) = (per_op(single_rtt, rounds), per_op(threshold_rtt, rounds));
    println!("pseudonym per donation ({n} CPU evaluations, {rounds} HTTPS round trips, 2 cores)");
    println!("  CPU, all parties in-process   single key {sc:8.1} µs   t=2,n=3 {tc:8.1} µs   ratio {:.2}", tc / sc);
    println!("  HTTPS round trip, loopback    single key {sr:8.1} µs   t=2,n=3 {tr:8.1} µs   ratio {:.2}", tr / sr);
}
