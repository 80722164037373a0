//! Threshold pseudonymisation against real pseudonymiser instances over TLS 1.3 (2 of 3, key
//! shares from the distributed key generation), and a real intake whose example study embeds
//! their configuration.
//!
//! | attack or failure | test |
//! |---|---|
//! | the intake operator enumerates CPR numbers with what the intake stores | [`intake_operator_holds_no_oprf_key_material`] |
//! | one instance alone (t − 1 shares) tries to evaluate | [`fewer_than_t_answers_give_no_pseudonym`] |
//! | a malicious instance answers with a share of another key | [`a_wrong_share_is_detected_and_tolerated`] |
//! | an instance is down, then two are | [`a_down_instance_is_tolerated_while_t_remain`] |
//! | a replayed answer (for another blinded element) and malformed answers | [`replayed_and_malformed_answers_are_refused`] |
//! | an outsider floods one instance (per address), with and without credentials | [`floods_are_rate_limited_and_credentials_required`] |
//! | (honest) a client whose pooled connections outlive an instance's connection lifetime | [`a_donor_client_outlives_an_instances_connection_lifetime`] |

use std::path::{Path, PathBuf};

use base64::Engine as _;
use datadonor_client::client::DonorCredentialToken;
use datadonor_client::{ConsentChoice, Intake, IntakeConfig, IntakeSession, TrustAnchors};
use datadonor_pseudonymiser::local::{instance_dir, start_local, LocalService};
use datadonor_pseudonymiser::{server, KeyShare};
use datadonor_schemas::pseudonym::{Cpr, Pseudonym};
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::threshold::{
    blind, AnswerError, DonorCredential, EvaluateRequest, InstanceAnswer, ThresholdError,
};
use datadonor_schemas::time::{Clock, SystemClock};

const CPR: &str = "0101801234";

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    service: LocalService,
    ca: Vec<u8>,
}

async fn env(credential_issuer: Option<&SigningKey>) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pseudonymisers");
    let issuer = credential_issuer.map(|k| k.public_key());
    let service = start_local(&root, "dk-pseudonymiser", 3, 2, issuer.as_ref(), |c| {
        c.per_address_burst = 1000;
        c.per_address_per_second = 1000.0;
    })
    .await
    .expect("instances start");
    let ca = service.ca_pem.clone().into_bytes();
    Env {
        _dir: dir,
        root,
        service,
        ca,
    }
}

fn http(ca: &[u8]) -> reqwest::Client {
    let mut b = reqwest::Client::builder().https_only(true);
    for c in reqwest::Certificate::from_pem_bundle(ca).expect("CA PEM") {
        b = b.add_root_certificate(c);
    }
    b.use_rustls_tls().build().expect("client")
}

async fn ask(
    client: &reqwest::Client,
    url: &str,
    blinded: [u8; 32],
    credential: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut rb = client
        .post(format!("{url}/v1/evaluate"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&EvaluateRequest { blinded }).expect("json"));
    if let Some(c) = credential {
        rb = rb.header("authorization", c);
    }
    let r = rb.send().await.expect("request");
    let s = r.status().as_u16();
    (s, r.bytes().await.expect("body").to_vec())
}

fn slug(b: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(b).expect("problem document");
    v["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:datadonor:problem:"))
        .expect("slug")
        .to_string()
}

fn study_with(config: &datadonor_schemas::threshold::PseudonymiserConfig) -> StudyDefinition {
    let mut s = StudyDefinition::from_toml(datadonor_intake::init::EXAMPLE_STUDY_TOML)
        .expect("example study");
    s.pseudonymiser = Some(config.clone());
    s
}

/// The pseudonym from the answers of the given instances.
async fn pseudonym_from(env: &Env, indexes: &[u16]) -> Result<Pseudonym, ThresholdError> {
    let cpr = Cpr::parse(CPR).expect("cpr");
    let b = blind(&cpr).expect("blind");
    let client = http(&env.ca);
    let mut answers = Vec::new();
    for i in indexes {
        let inst = env.service.config.instance(*i).expect("instance");
        let (s, body) = ask(&client, &inst.url, b.blinded, None).await;
        assert_eq!(s, 200, "instance {i}");
        answers.push(InstanceAnswer::from_json(&body).expect("answer"));
    }
    let c = b.combine(&env.service.config, &answers, Vec::new())?;
    Ok(c.output.study_pseudonym("t2d-dk"))
}

fn every_file(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            every_file(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_operator_holds_no_oprf_key_material() {
    let env = env(None).await;
    // An intake initialised the way the demo does, one real donation through the client.
    let intake_dir = env.root.parent().expect("parent").join("intake");
    let now = SystemClock.now();
    datadonor_intake::init::init_with(
        &intake_dir,
        datadonor_intake::init::InitOptions {
            pseudonymiser: Some(&env.service.config),
            ..Default::default()
        },
        now,
    )
    .expect("init");
    let mut config = datadonor_intake::Config::load_dir(&intake_dir).expect("config");
    config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let running = datadonor_intake::start(config).await.expect("intake");
    let mut ca = std::fs::read(running.ca_pem_path()).expect("ca");
    ca.extend_from_slice(&env.ca);
    let intake = Intake::new(IntakeConfig::new(
        running.base_url(),
        TrustAnchors::CaPem(ca),
    ))
    .expect("client");
    let session = IntakeSession::connect(intake, None).await.expect("session");
    let study = session
        .intake()
        .study(&datadonor_schemas::study::StudyId::new("t2d-dk").expect("id"))
        .await
        .expect("study");
    // A synthetic donor's export.
    let pop = datadonor_tests::synthpop::PopulationConfig {
        seed: 7,
        donors: 20,
        ..Default::default()
    };
    let mut rows = None;
    for donor in datadonor_tests::synthpop::donors(&pop) {
        let p = env.root.join(format!("export-{}.json", donor.index));
        let f = std::io::BufWriter::new(std::fs::File::create(&p).expect("export"));
        datadonor_tests::synthpop::fhir::write_fhir_bundle(&donor, f).expect("write");
        let cpr = Cpr::parse(&donor.cpr).expect("cpr");
        let r = datadonor_client::session::minimise_blocking(
            vec![p],
            study.definition.clone(),
            datadonor_client::MinimiseOptions::default().with_cpr(&cpr),
        )
        .await
        .expect("minimise");
        if !r.rows.is_empty() {
            rows = Some((r, cpr));
            break;
        }
    }
    let (rows, cpr) = rows.expect("a donor with rows");
    let out = session
        .donate(
            &study,
            &rows,
            &cpr,
            &SigningKey::generate().expect("key"),
            &ConsentChoice {
                purposes: vec!["t2d-epidemiology".into()],
                expires_in_days: 30,
                language: None,
            },
        )
        .await
        .expect("donation through the threshold service");
    assert_eq!(out.pseudonymisers_used.len(), 2);
    running.shutdown().await.expect("shutdown");

    // Every file the intake wrote: none holds a key share (raw, base64 or hex), none is named
    // for an OPRF key, and the ledger does hold the pseudonym the operator would like to map
    // back.
    let mut files = Vec::new();
    every_file(&intake_dir, &mut files);
    assert!(files.len() > 5, "{files:?}");
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for i in 1..=3u16 {
        let share_file =
            std::fs::read(instance_dir(&env.root, i).join("share.json")).expect("share");
        let v: serde_json::Value = serde_json::from_slice(&share_file).expect("json");
        let b64 = v["secret_share"].as_str().expect("secret").to_string();
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .expect("b64");
        secrets.push(hex::encode(&raw).into_bytes());
        secrets.push(b64.into_bytes());
        secrets.push(raw);
    }
    let mut ledger_has_pseudonym = false;
    for f in &files {
        let name = f.to_string_lossy().to_lowercase();
        assert!(!name.contains("oprf") && !name.contains("share"), "{name}");
        let bytes = std::fs::read(f).expect("read");
        for s in &secrets {
            assert!(!contains(&bytes, s), "{} holds a key share", f.display());
        }
        if contains(&bytes, out.pseudonym.to_hex().as_bytes()) {
            ledger_has_pseudonym = true;
        }
    }
    assert!(ledger_has_pseudonym, "the ledger names the pseudonym");
    // The intake crate does not link the pseudonymiser (its key code): checked on the graph.
    let meta = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout).expect("metadata json");
    for pkg in v["packages"].as_array().expect("packages") {
        let name = pkg["name"].as_str().unwrap_or_default();
        if name == "datadonor-intake" || name == "datadonor-analytics" {
            for d in pkg["dependencies"].as_array().expect("deps") {
                let kind = d["kind"].as_str().unwrap_or("normal");
                let dep = d["name"].as_str().unwrap_or_default();
                assert!(
                    kind == "dev"
                        || !["datadonor-pseudonymiser", "frost-ristretto255", "voprf"]
                            .contains(&dep),
                    "{name} depends on {dep}"
                );
            }
        }
        // Nothing a researcher runs can open a batch: the research client links neither the
        // steward's crate (vault key, batch opening) nor its engines.
        if name == "datadonor-research" {
            for d in pkg["dependencies"].as_array().expect("deps") {
                let dep = d["name"].as_str().unwrap_or_default();
                assert!(
                    ![
                        "datadonor-analytics",
                        "datadonor-intake",
                        "polars",
                        "opendp",
                        "hpke",
                        "aes-gcm"
                    ]
                    .contains(&dep),
                    "{name} depends on {dep}"
                );
            }
        }
    }
    env.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_than_t_answers_give_no_pseudonym() {
    let env = env(None).await;
    let p12 = pseudonym_from(&env, &[1, 2]).await.expect("1 and 2");
    assert_eq!(pseudonym_from(&env, &[1, 3]).await.expect("1 and 3"), p12);
    assert_eq!(pseudonym_from(&env, &[2, 3]).await.expect("2 and 3"), p12);
    assert_eq!(pseudonym_from(&env, &[3, 2, 1]).await.expect("all"), p12);
    for one in [1u16, 2, 3] {
        match pseudonym_from(&env, &[one]).await {
            Err(ThresholdError::NotEnoughAnswers { valid, needed, .. }) => {
                assert_eq!((valid, needed), (1, 2))
            }
            other => panic!("instance {one} alone: {other:?}"),
        }
    }
    // A share file alone (t − 1 = 1 share) evaluates only its own share: its output under the
    // share is not the pseudonym.
    let share = KeyShare::read(&instance_dir(&env.root, 1).join("share.json")).expect("share");
    let cpr = Cpr::parse(CPR).expect("cpr");
    let b = blind(&cpr).expect("blind");
    let a = share.evaluate(&b.blinded).expect("evaluate");
    let err = b
        .combine(&env.service.config, &[a], Vec::new())
        .expect_err("one share is not enough");
    assert!(matches!(
        err,
        ThresholdError::NotEnoughAnswers { valid: 1, .. }
    ));
    env.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_share_is_detected_and_tolerated() {
    let mut env = env(None).await;
    let honest = pseudonym_from(&env, &[1, 2]).await.expect("honest");
    // Instance 3 is replaced, on its address, by one holding index 3 of another key.
    let addr = env.service.instances.pop().expect("instance 3");
    let listen = addr.addr();
    addr.shutdown().await;
    let (other, _) =
        datadonor_pseudonymiser::dkg::run_local("dk-pseudonymiser", 3, 2).expect("other key");
    let dir3 = instance_dir(&env.root, 3);
    other[2].write(&dir3.join("share.json")).expect("write");
    let mut cfg = server::load_config(&dir3).expect("config");
    cfg.listen = listen;
    env.service
        .instances
        .push(server::start(&dir3, cfg).await.expect("restart"));

    let cpr = Cpr::parse(CPR).expect("cpr");
    let b = blind(&cpr).expect("blind");
    let client = http(&env.ca);
    let mut answers = Vec::new();
    for inst in &env.service.config.instances {
        let (_, body) = ask(&client, &inst.url, b.blinded, None).await;
        answers.push(InstanceAnswer::from_json(&body).expect("answer"));
    }
    let c = b
        .combine(&env.service.config, &answers, Vec::new())
        .expect("two honest answers");
    assert_eq!(c.output.study_pseudonym("t2d-dk"), honest);
    assert_eq!(c.used, vec![1, 2]);
    assert_eq!(c.rejected, vec![AnswerError::BadProof(3)]);

    // Through the donor client: the donation-time pseudonym is still the honest one, with the
    // bad answer reported.
    let intake = Intake::new(IntakeConfig::new(
        "https://127.0.0.1:1",
        TrustAnchors::CaPem(env.ca.clone()),
    ))
    .expect("client");
    let out = intake
        .pseudonym(&cpr, &study_with(&env.service.config))
        .await
        .expect("pseudonym");
    assert_eq!(out.pseudonym, honest);
    assert_eq!(out.rejected, vec![AnswerError::BadProof(3)]);
    env.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_instance_is_tolerated_while_t_remain() {
    let mut env = env(None).await;
    let cpr = Cpr::parse(CPR).expect("cpr");
    let study = study_with(&env.service.config);
    let intake = Intake::new(IntakeConfig::new(
        "https://127.0.0.1:1",
        TrustAnchors::CaPem(env.ca.clone()),
    ))
    .expect("client");
    let all = intake.pseudonym(&cpr, &study).await.expect("all up");
    env.service.instances.remove(0).shutdown().await;
    let two = intake.pseudonym(&cpr, &study).await.expect("two up");
    assert_eq!(two.pseudonym, all.pseudonym);
    assert_eq!(two.used, vec![2, 3]);
    assert!(
        matches!(
            two.rejected.as_slice(),
            [AnswerError::Unavailable { index: 1, .. }]
        ),
        "{:?}",
        two.rejected
    );
    env.service.instances.remove(0).shutdown().await;
    match intake.pseudonym(&cpr, &study).await {
        Err(datadonor_client::client::ClientError::Pseudonymiser(
            ThresholdError::NotEnoughAnswers {
                valid: 1,
                needed: 2,
                rejected,
            },
        )) => assert_eq!(rejected.len(), 2),
        other => panic!("one instance up: {other:?}"),
    }
    env.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_malformed_answers_are_refused() {
    let env = env(None).await;
    let cpr = Cpr::parse(CPR).expect("cpr");
    let client = http(&env.ca);
    let first = blind(&cpr).expect("blind");
    let url = |i: u16| {
        env.service
            .config
            .instance(i)
            .expect("instance")
            .url
            .clone()
    };
    let (_, old) = ask(&client, &url(1), first.blinded, None).await;
    let old = InstanceAnswer::from_json(&old).expect("answer");
    let b = blind(&cpr).expect("blind");
    let (_, a2) = ask(&client, &url(2), b.blinded, None).await;
    let a2 = InstanceAnswer::from_json(&a2).expect("answer");
    // Instance 1's answer to an earlier request, replayed: its proof is for another B.
    match b.combine(&env.service.config, &[old.clone(), a2.clone()], Vec::new()) {
        Err(ThresholdError::NotEnoughAnswers { rejected, .. }) => {
            assert_eq!(rejected, vec![AnswerError::BadProof(1)])
        }
        other => panic!("{other:?}"),
    }
    let b = blind(&cpr).expect("blind");
    let (_, fresh1) = ask(&client, &url(1), b.blinded, None).await;
    let fresh1 = InstanceAnswer::from_json(&fresh1).expect("answer");
    let (_, fresh2) = ask(&client, &url(2), b.blinded, None).await;
    let fresh2 = InstanceAnswer::from_json(&fresh2).expect("answer");
    let mut wrong_index = fresh2.clone();
    wrong_index.index = 3;
    let mut unknown = fresh2.clone();
    unknown.index = 9;
    let mut identity = fresh2.clone();
    identity.evaluated = [0u8; 32];
    let mut short_proof = fresh2.clone();
    short_proof.proof.truncate(63);
    let bad = [
        (wrong_index, AnswerError::BadProof(3)),
        (unknown, AnswerError::UnknownIndex(9)),
        (identity, AnswerError::BadElement(2)),
        (short_proof, AnswerError::MalformedProof(2)),
    ];
    for (answer, want) in bad {
        assert_eq!(b.verify_answer(&env.service.config, &answer), Err(want));
    }
    // A duplicate index is refused even when the copy is valid; two distinct valid answers
    // still combine.
    let c = b
        .combine(
            &env.service.config,
            &[fresh1.clone(), fresh1, fresh2],
            Vec::new(),
        )
        .expect("two valid");
    assert_eq!(c.rejected, vec![AnswerError::DuplicateIndex(1)]);
    // A forged answer labelled with instance 1's index, arriving first, does not crowd out
    // instance 1's real answer.
    let b = blind(&cpr).expect("blind");
    let (_, r1) = ask(&client, &url(1), b.blinded, None).await;
    let (_, r2) = ask(&client, &url(2), b.blinded, None).await;
    let (r1, r2) = (
        InstanceAnswer::from_json(&r1).expect("answer"),
        InstanceAnswer::from_json(&r2).expect("answer"),
    );
    let mut forged = r2.clone();
    forged.index = 1;
    let c = b
        .combine(&env.service.config, &[forged, r1, r2], Vec::new())
        .expect("the real answers still combine");
    assert_eq!(c.used, vec![1, 2]);
    assert_eq!(c.rejected, vec![AnswerError::BadProof(1)]);
    // Malformed requests get problem documents and no evaluation.
    let r = client
        .post(format!("{}/v1/evaluate", url(1)))
        .header("content-type", "application/json")
        .body(r#"{"blinded":"not base64"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(slug(&r.bytes().await.expect("body")), "bad-request");
    let (s, body) = ask(&client, &url(1), [0u8; 32], None).await;
    assert_eq!((s, slug(&body).as_str()), (422, "invalid-element"));
    let r = client
        .post(format!("{}/v1/evaluate", url(1)))
        .header("content-type", "application/json")
        .body(vec![b'{'; 5000])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 413);
    // The media type decides, not its spelling: parameters and case are accepted, another
    // type is not.
    let body = format!(
        r#"{{"blinded":"{}"}}"#,
        base64::engine::general_purpose::STANDARD.encode(blind(&cpr).expect("blind").blinded)
    );
    for (ct, status) in [
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("text/plain", 400),
        ("application/jsonx", 400),
    ] {
        let r = client
            .post(format!("{}/v1/evaluate", url(1)))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), status, "{ct}");
    }
    env.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited_and_credentials_required() {
    let enrolment = SigningKey::generate().expect("key");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("p");
    let issuer = enrolment.public_key();
    let service = start_local(&root, "dk-pseudonymiser", 3, 2, Some(&issuer), |c| {
        c.per_address_burst = 4;
        c.per_address_per_second = 0.001;
        c.per_credential_burst = 2;
        c.per_credential_per_second = 0.001;
    })
    .await
    .expect("start");
    let client = http(service.ca_pem.as_bytes());
    let cpr = Cpr::parse(CPR).expect("cpr");
    let b = blind(&cpr).expect("blind");
    let url = service.config.instance(1).expect("1").url.clone();
    let credential = |subject: [u8; 16], config_id: &str, not_after: i64, key: &SigningKey| {
        DonorCredential::bearer(&SignedObject::sign(
            Context::DonorCredential,
            &DonorCredential {
                format: 1,
                config_id: config_id.into(),
                subject,
                not_after,
            },
            key,
        ))
    };
    let now = SystemClock.now();
    // No credential, a forged one, one for another service, an expired one: 401, before any
    // token of the address bucket is spent.
    let (s, body) = ask(&client, &url, b.blinded, None).await;
    assert_eq!((s, slug(&body).as_str()), (401, "credential-required"));
    let forged = credential(
        [1; 16],
        "dk-pseudonymiser",
        now + 60,
        &SigningKey::generate().expect("k"),
    );
    let other = credential([1; 16], "another-service", now + 60, &enrolment);
    let expired = credential([1; 16], "dk-pseudonymiser", now - 1, &enrolment);
    for c in [forged, other, expired, "Bearer %%%".to_string()] {
        let (s, body) = ask(&client, &url, b.blinded, Some(&c)).await;
        assert_eq!((s, slug(&body).as_str()), (401, "bad-credential"), "{c}");
    }
    // One credential: its own bucket of 2, then 429 with Retry-After.
    let donor = credential([2; 16], "dk-pseudonymiser", now + 60, &enrolment);
    for _ in 0..2 {
        assert_eq!(ask(&client, &url, b.blinded, Some(&donor)).await.0, 200);
    }
    let r = client
        .post(format!("{url}/v1/evaluate"))
        .header("content-type", "application/json")
        .header("authorization", &donor)
        .body(serde_json::to_vec(&EvaluateRequest { blinded: b.blinded }).expect("json"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(slug(&r.bytes().await.expect("body")), "rate-limited");
    // Fresh credentials from one address: the address bucket (4, of which 3 are spent) runs
    // out after one more, whatever the credential.
    let mut served = 0;
    let mut limited = 0;
    for i in 0..5u8 {
        let c = credential([10 + i; 16], "dk-pseudonymiser", now + 60, &enrolment);
        match ask(&client, &url, b.blinded, Some(&c)).await {
            (200, _) => served += 1,
            (429, body) => {
                assert_eq!(slug(&body), "rate-limited");
                limited += 1
            }
            (s, _) => panic!("status {s}"),
        }
    }
    assert_eq!((served, limited), (1, 4));
    // The donor client sends the credential it was given.
    let intake = Intake::new(IntakeConfig::new(
        "https://127.0.0.1:1",
        TrustAnchors::CaPem(service.ca_pem.clone().into_bytes()),
    ))
    .expect("client")
    .with_credential(DonorCredentialToken::new(&credential(
        [3; 16],
        "dk-pseudonymiser",
        now + 60,
        &enrolment,
    )));
    // Instance 1's address bucket is empty; 2 and 3 answer.
    let out = intake
        .pseudonym(&cpr, &study_with(&service.config))
        .await
        .expect("two instances with fresh buckets");
    assert_eq!(out.used, vec![2, 3]);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_client_outlives_an_instances_connection_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_local(dir.path(), "dk-pseudonymiser", 3, 2, None, |c| {
        c.connection_timeout_ms = 300;
    })
    .await
    .expect("start");
    let intake = Intake::new(IntakeConfig::new(
        "https://127.0.0.1:1",
        TrustAnchors::CaPem(service.ca_pem.clone().into_bytes()),
    ))
    .expect("client");
    let study = study_with(&service.config);
    let cpr = Cpr::parse(CPR).expect("cpr");
    let first = intake.pseudonym(&cpr, &study).await.expect("first");
    // The pooled connections outlive the instances' lifetime for them; the next evaluations
    // must still get every answer.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let again = intake.pseudonym(&cpr, &study).await.expect("again");
        assert_eq!(again.pseudonym, first.pseudonym);
        assert!(again.rejected.is_empty(), "{:?}", again.rejected);
    }
    service.shutdown().await;
}
