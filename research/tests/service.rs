//! The client against a minimal HTTPS server (a throwaway CA, TLS 1.3) that records each request
//! and answers with a canned response: the signed request, the released table, problems and the
//! budget.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use datadonor_research::ClientError;
use datadonor_schemas::privacy::{
    ContributionBounds, QueryRequest, ReleasedColumn, ReleasedRow, ReleasedTable, RunPrivacy,
};
use datadonor_schemas::query::{MeasureOp, QuerySpec};
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SPEC: &str = r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "alice"
title = "HbA1c by region"
k = 5
group_by = ["region"]
totals = true
contribution = "donor_mean"

[[measures]]
op = "donors"

[[measures]]
op = "mean"
field = "hba1c"
"#;

/// One request the server received.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// Serve `answers` in order, one per connection, on 127.0.0.1; returns the URL, the CA file
/// and the requests seen.
fn serve(
    dir: &Path,
    answers: Vec<(u16, &'static str, Vec<u8>)>,
) -> (String, PathBuf, mpsc::Receiver<Seen>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut sp = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = sp.signed_by(&key, &ca, &ca_key).expect("cert");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("ca file");

    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            for (status, content_type, body) in answers {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body_start) = loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..i]).into_owned(), i + 4);
                    }
                };
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                while buf.len() < body_start + len {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let _ = tx.send(Seen {
                    head,
                    body: buf[body_start..].to_vec(),
                });
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            }
        });
    });
    (url, ca_path, rx)
}

fn table() -> ReleasedTable {
    let col = |name: &str, op| ReleasedColumn {
        name: name.into(),
        op,
        field: None,
        q: None,
        noise_scale: 1.0,
        epsilon: 0.25,
        decimals: None,
    };
    ReleasedTable {
        format: 1,
        study_id: StudyId::new("t2d-dk").expect("id"),
        query_sha256: QuerySpec::from_toml(SPEC).expect("spec").hash(),
        approval_sha256: [7; 32],
        researcher: "alice".into(),
        purpose: "t2d-epidemiology".into(),
        title: "HbA1c by region".into(),
        k: 5,
        dimensions: vec!["region".into()],
        columns: vec![
            col("donors", MeasureOp::Donors),
            col("mean_hba1c", MeasureOp::Mean),
        ],
        rows: vec![
            ReleasedRow {
                key: vec![Some("north".into())],
                values: vec![Some(40.0), Some(47.25)],
                error95: vec![Some(3.0), Some(1.5)],
                suppressed: None,
            },
            ReleasedRow {
                key: vec![None],
                values: vec![Some(90.0), Some(48.0)],
                error95: vec![Some(3.0), Some(0.75)],
                suppressed: None,
            },
        ],
        privacy: RunPrivacy {
            epsilon: 0.5,
            delta: 0.0,
            study_epsilon_left: 2.5,
            study_delta_left: 0.0,
            researcher_epsilon_left: 1.0,
            researcher_delta_left: 0.0,
        },
        bounds: ContributionBounds {
            max_rows_per_cell: 1,
            max_cells_per_donor: 2,
            tables: 2,
        },
        ledger_index: 17,
    }
}

fn approval(steward: &SigningKey) -> SignedObject {
    SignedObject::sign(
        Context::QueryApproval,
        &serde_json::json!({"note": "stands in for an approval; the client does not read it"}),
        steward,
    )
}

#[test]
fn run_query_blocking_sends_a_signed_request_and_returns_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = serde_json::to_vec(&table()).expect("json");
    let (url, ca, seen) = serve(dir.path(), vec![(200, "application/json", body)]);
    let key = SigningKey::generate().expect("key");
    let steward = SigningKey::generate().expect("steward");
    let approval = approval(&steward);
    let got =
        datadonor_research::run_query_blocking(&url, &ca, &key, SPEC, &approval).expect("released");
    assert_eq!(got, table());

    let req = seen.recv().expect("a request");
    assert!(
        req.head.starts_with("POST /v1/queries HTTP/1.1"),
        "{}",
        req.head
    );
    let signed = SignedObject::from_bytes(&req.body).expect("signed object");
    let opened = signed
        .open::<QueryRequest>(Context::QueryRequest, "query request")
        .expect("verifies");
    assert_eq!(opened.signer, key.public_key());
    assert_eq!(opened.body.format, datadonor_schemas::PROTOCOL_VERSION);
    assert_eq!(opened.body.spec_toml, SPEC);
    assert_eq!(opened.body.approval, approval);
    assert_ne!(opened.body.request_id, [0; 16]);
    assert!((opened.body.time - datadonor_research::now()).abs() < 60);
}

#[test]
fn a_problem_document_becomes_a_problem_error_without_control_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = serde_json::json!({
        "type": "urn:datadonor:problem:over-budget",
        "title": "over-budget",
        "status": 403,
        "detail": "this run's epsilon would exceed\x1b[31m the researcher's budget",
    });
    let (url, ca, _seen) = serve(
        dir.path(),
        vec![(
            403,
            "application/problem+json",
            doc.to_string().into_bytes(),
        )],
    );
    let key = SigningKey::generate().expect("key");
    let e = datadonor_research::run_query_blocking(&url, &ca, &key, SPEC, &approval(&key))
        .expect_err("refused");
    match e {
        ClientError::Problem {
            status,
            kind,
            detail,
        } => {
            assert_eq!(status, 403);
            assert_eq!(kind, "over-budget");
            assert_eq!(
                detail,
                "this run's epsilon would exceed[31m the researcher's budget"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_outside_the_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _ca, seen) = serve(dir.path(), vec![(200, "application/json", Vec::new())]);
    // Trust another CA than the server's.
    let other = tempfile::tempdir().expect("tempdir");
    let (_u, other_ca, _s) = serve(other.path(), Vec::new());
    let key = SigningKey::generate().expect("key");
    let e = datadonor_research::run_query_blocking(&url, &other_ca, &key, SPEC, &approval(&key))
        .expect_err("untrusted");
    assert!(matches!(e, ClientError::Http(_)), "{e:?}");
    assert!(seen.try_recv().is_err(), "no request reached the server");
}

fn cli_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let key = SigningKey::generate().expect("key");
    let key_path = dir.join("alice.key");
    std::fs::write(&key_path, key.to_key_file().as_bytes()).expect("key");
    let spec = dir.join("q.toml");
    std::fs::write(&spec, SPEC).expect("spec");
    let appr = dir.join("approval.json");
    std::fs::write(&appr, approval(&key).to_bytes()).expect("approval");
    (key_path, spec, appr)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[test]
fn cli_query_prints_the_table_and_the_spend_and_writes_every_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = serde_json::to_vec(&table()).expect("json");
    let (url, ca, _seen) = serve(dir.path(), vec![(200, "application/json", body)]);
    let (key, spec, appr) = cli_files(dir.path());
    let outs: Vec<PathBuf> = ["t.csv", "t.json", "t.parquet"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let plot = dir.path().join("t.svg");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-research"));
    cmd.args(["query", "--service", &url, "--ca", s(&ca), "--key", s(&key)]);
    cmd.args([
        "--spec",
        s(&spec),
        "--approval",
        s(&appr),
        "--plot",
        s(&plot),
    ]);
    for o in &outs {
        cmd.args(["--out", s(o)]);
    }
    let o = cmd.output().expect("run");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("47.250 ± 1.500"), "{stdout}");
    assert!(
        stderr.contains("logged query_run at ledger index 17; spent ε=0.5, δ=0; left for you: ε=1, δ=0; left for the study: ε=2.5, δ=0"),
        "{stderr}"
    );
    for o in outs.iter().chain(std::iter::once(&plot)) {
        assert!(
            std::fs::metadata(o).map(|m| m.len() > 0).unwrap_or(false),
            "{}",
            o.display()
        );
    }
    let csv = std::fs::read_to_string(&outs[0]).expect("csv");
    assert!(csv.contains("north,40,3,47.25,1.5"), "{csv}");
}

#[test]
fn cli_query_prints_the_problem_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = serde_json::json!({"type": "x", "title": "not-approved", "status": 403,
        "detail": "the approval\nexpired"});
    let (url, ca, _seen) = serve(
        dir.path(),
        vec![(
            403,
            "application/problem+json",
            doc.to_string().into_bytes(),
        )],
    );
    let (key, spec, appr) = cli_files(dir.path());
    let out = dir.path().join("never.csv");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-research"))
        .args(["query", "--service", &url, "--ca", s(&ca), "--key", s(&key)])
        .args(["--spec", s(&spec), "--approval", s(&appr), "--out", s(&out)])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        stderr.trim_end(),
        "datadonor-research: 403 not-approved: the approvalexpired"
    );
    assert!(o.stdout.is_empty());
    assert!(!out.exists());
}

#[test]
fn cli_budget_asks_for_the_researcher_and_prints_the_amounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let answer = serde_json::json!({
        "study_id": "t2d-dk",
        "study": {"epsilon": 3.0, "delta": 1e-6, "epsilon_spent": 0.5, "delta_spent": 0.0},
        "runs": 1,
        "researcher": {"name": "alice", "epsilon": 1.5, "delta": 1e-6,
                       "epsilon_spent": 0.5, "delta_spent": 0.0},
    });
    let (url, ca, seen) = serve(
        dir.path(),
        vec![(200, "application/json", answer.to_string().into_bytes())],
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor-research"))
        .args([
            "budget",
            "--service",
            &url,
            "--ca",
            s(&ca),
            "--researcher",
            "a lice",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let req = seen.recv().expect("request");
    assert!(
        req.head.starts_with("GET /v1/budget/a%20lice HTTP/1.1"),
        "{}",
        req.head
    );
    assert!(
        stdout.contains("study t2d-dk: ε 0.5 of 3 spent (2.5 left)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("researcher alice: ε 0.5 of 1.5 spent (1 left)"),
        "{stdout}"
    );
    assert!(stdout.contains("runs logged: 1"), "{stdout}");
}

#[test]
fn problem_bodies_that_are_not_json_are_still_reported() {
    let e = datadonor_research::problem(502, b"bad gateway\x07");
    assert_eq!(e.to_string(), "502 error: bad gateway");
    let _ = std::io::stderr().flush();
}
