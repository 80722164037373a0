//! The steward's query service against the findings it exists to prevent: a one-run approval
//! run twice at once, runs past the budget, differencing two runs whose populations differ by
//! one donor, and requests that are not a registered researcher's, late, replayed or for
//! another researcher. The service is driven in process (`QueryService::run` on the signed
//! request bytes, as the HTTPS handler calls it) over an in-memory ledger that signs its own
//! checkpoints and real sealed batches.

use std::path::PathBuf;
use std::sync::Arc;

use datadonor_analytics::audit::audit_queries;
use datadonor_analytics::ledger::{
    verify_ledger, verify_ledger_index, Appended, LedgerError, LedgerIndex, MemoryLedger,
    ServiceLedger,
};
use datadonor_analytics::service::{Problem, QueryService, Researchers, ServiceParts};
use datadonor_analytics::store::BatchStore;
use datadonor_analytics::testkit::{approval_of, donor, grant};
use datadonor_analytics::vault::VaultKey;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::privacy::{PrivacySpend, QueryRequest, ReleasedTable};
use datadonor_schemas::query::{QueryApproval, QuerySpec};
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::time::{Clock, UnixSeconds};
use polars::prelude::*;

const STUDY: &str = include_str!("../../examples/t2d-study.toml");
const NOW: i64 = 1_750_000_000;
const EPI: &str = "t2d-epidemiology";
const RESEARCHER: &str = "r@sdu.example";

#[derive(Debug)]
struct Fixed(UnixSeconds);
impl Clock for Fixed {
    fn now(&self) -> UnixSeconds {
        self.0
    }
}

/// The in-memory ledger shared between the test (which adds consents) and the service.
struct Shared(Arc<MemoryLedger>);
impl ServiceLedger for Shared {
    fn verified_index(&self) -> Result<LedgerIndex, LedgerError> {
        verify_ledger_index(&*self.0, &[self.0.verifier()?], None)
    }
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError> {
        datadonor_analytics::ledger::LedgerSink::append(&*self.0, entry)
    }
}

struct World {
    study: StudyDefinition,
    vault: VaultKey,
    steward: SigningKey,
    researcher: SigningKey,
    ledger: Arc<MemoryLedger>,
    dir: tempfile::TempDir,
    batches: PathBuf,
}

fn world(privacy: &str) -> World {
    let text = STUDY.replace(
        STUDY
            .split("[privacy]")
            .nth(1)
            .expect("the example study has [privacy]"),
        privacy,
    );
    let study = StudyDefinition::from_toml(&text).expect("study");
    let dir = tempfile::tempdir().expect("dir");
    let batches = dir.path().join("batches");
    std::fs::create_dir_all(&batches).expect("batches dir");
    World {
        study,
        vault: VaultKey::generate(1),
        steward: SigningKey::generate().expect("key"),
        researcher: SigningKey::generate().expect("key"),
        ledger: Arc::new(MemoryLedger::new("datadonor.test/ledger").expect("ledger")),
        dir,
        batches,
    }
}

const GENEROUS: &str = "
epsilon = 100.0
delta = 1e-3
researcher_epsilon = 100.0
researcher_delta = 1e-3
max_rows_per_cell = 2
max_cells_per_donor = 1
";

fn service(w: &World) -> QueryService {
    QueryService::new(ServiceParts {
        study: w.study.clone(),
        approvers: vec![w.steward.public_key()],
        researchers: Researchers::parse(
            &format!("{RESEARCHER} {}\n", w.researcher.public_key().to_base64()),
            &w.dir.path().join("researchers"),
        )
        .expect("researchers"),
        vault: {
            let p = w.dir.path().join("vault.key");
            if !p.exists() {
                w.vault.save(&p).expect("vault saved");
            }
            VaultKey::load(&p).expect("vault")
        },
        store: BatchStore::open(&w.batches).expect("store"),
        ledger: Box::new(Shared(w.ledger.clone())),
        state_dir: w.dir.path().join("state"),
        clock: Arc::new(Fixed(NOW)),
    })
    .expect("service")
}

/// Donors `ids`, each consenting and with `rows` rows of HbA1c `value` in Syddanmark.
fn donate(w: &World, ids: std::ops::Range<u32>, value: f64, rows: usize, batch: i64) {
    let mut donors = Vec::new();
    let mut consent = Vec::new();
    for i in ids.clone() {
        w.ledger
            .push(&grant(&w.study, donor(i), &[EPI], NOW + 86_400));
        for _ in 0..rows {
            donors.push(donor(i).to_hex());
            consent.push(datadonor_analytics::testkit::record_hex(donor(i)));
        }
    }
    let n = donors.len();
    let mut cols = vec![
        Column::new("donor".into(), donors),
        Column::new("period".into(), vec!["2024-03"; n]),
        Column::new("age_band".into(), vec!["50-59"; n]),
        Column::new("sex".into(), vec!["female"; n]),
        Column::new("region".into(), vec!["syddanmark"; n]),
        Column::new("t2d".into(), vec![true; n]),
        Column::new("hba1c".into(), vec![Some(value); n]),
    ];
    for f in ["bmi", "systolic", "diastolic", "glucose"] {
        let v = match f {
            "bmi" => 27.0,
            "glucose" => 6.0,
            _ => 80.0,
        };
        cols.push(Column::new(f.into(), vec![Some(v); n]));
    }
    cols.push(Column::new("consent".into(), consent));
    let mut df = DataFrame::new(n, cols).expect("frame");
    let store = BatchStore::open(&w.batches).expect("store");
    datadonor_analytics::testkit::store_frame(&store, &w.study, &w.vault, &mut df, batch)
        .expect("stored");
}

const SPEC: &str = r#"
study = "t2d-dk"
purpose = "t2d-epidemiology"
researcher = "r@sdu.example"
k = 5
[[measures]]
op = "donors"
[[measures]]
op = "sum"
field = "hba1c"
"#;

fn approve(w: &World, spec: &str, max_runs: u32, epsilon: f64, id: u8) -> SignedObject {
    let s = QuerySpec::from_toml(spec).expect("spec");
    QueryApproval {
        privacy: Some(PrivacySpend {
            epsilon,
            delta: 1e-6,
        }),
        ..approval_of(&s, id, NOW, max_runs)
    }
    .sign(&w.steward)
}

fn request_with(
    key: &SigningKey,
    spec: &str,
    approval: &SignedObject,
    id: [u8; 16],
    time: i64,
) -> Vec<u8> {
    SignedObject::sign(
        Context::QueryRequest,
        &QueryRequest {
            format: 1,
            request_id: id,
            time,
            spec_toml: spec.to_string(),
            approval: approval.clone(),
        },
        key,
    )
    .to_bytes()
}

fn request(w: &World, spec: &str, approval: &SignedObject, n: u32) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    request_with(&w.researcher, spec, approval, id, NOW)
}

fn runs_logged(w: &World) -> Vec<LedgerEntry> {
    w.ledger
        .parsed()
        .into_iter()
        .filter(|e| e.kind() == "query_run")
        .collect()
}

#[test]
fn a_one_run_approval_run_twice_at_once_publishes_once() {
    let w = world(GENEROUS);
    donate(&w, 0..40, 7.0, 2, 1);
    let svc = Arc::new(service(&w));
    let approval = approve(&w, SPEC, 1, 1.0, 1);
    let results: Vec<Result<ReleasedTable, Problem>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|n| {
                let (svc, body) = (svc.clone(), request(&w, SPEC, &approval, n));
                s.spawn(move || svc.run(&body))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    let refused = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("one refused");
    assert_eq!(
        (refused.status, refused.kind),
        (403, "not-approved"),
        "{refused}"
    );
    assert_eq!(runs_logged(&w).len(), 1);
    // A restarted service still counts the reserved run (the journal is durable).
    drop(svc);
    let again = service(&w).run(&request(&w, SPEC, &approval, 9));
    assert_eq!(again.expect_err("used").kind, "not-approved");
}

#[test]
fn runs_draw_down_the_budget_until_one_is_refused() {
    let w = world(
        "
epsilon = 10.0
delta = 1e-5
researcher_epsilon = 2.5
researcher_delta = 1e-5
max_rows_per_cell = 2
max_cells_per_donor = 1
",
    );
    donate(&w, 0..40, 7.0, 2, 1);
    let svc = service(&w);
    let approval = approve(&w, SPEC, 100, 1.0, 2);
    let mut left = Vec::new();
    for n in 0..2 {
        let t = svc
            .run(&request(&w, SPEC, &approval, n))
            .expect("within budget");
        assert_eq!(t.privacy.epsilon, 1.0);
        left.push(t.privacy.researcher_epsilon_left);
    }
    assert_eq!(left, vec![1.5, 0.5]);
    let e = svc
        .run(&request(&w, SPEC, &approval, 2))
        .expect_err("over budget");
    assert_eq!((e.status, e.kind), (403, "over-budget"), "{e}");
    // Each run's ledger entry carries its spend and what is left.
    let logged = runs_logged(&w);
    assert_eq!(logged.len(), 2);
    match &logged[1] {
        LedgerEntry::QueryRun {
            privacy: Some(p), ..
        } => {
            assert_eq!((p.epsilon, p.researcher_epsilon_left), (1.0, 0.5));
            assert!((p.study_epsilon_left - 8.0).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    // The auditor sums the spends per researcher and finds them consistent.
    let view =
        verify_ledger(&*w.ledger, &[w.ledger.verifier().expect("vkey")], None).expect("view");
    let audit = audit_queries(&view, None);
    assert_eq!(audit.budgets.len(), 1);
    let b = &audit.budgets[0];
    assert_eq!((b.researcher.as_str(), b.runs), (RESEARCHER, 2));
    assert_eq!((b.epsilon, b.epsilon_left), (2.0, 0.5));
    assert_eq!(audit.flagged(), 0);
    assert!(audit
        .render_text()
        .contains("privacy budget per researcher"));
    // A logged run whose recorded budget does not follow from the previous one is flagged.
    let forged = match &logged[1] {
        LedgerEntry::QueryRun {
            privacy: Some(p), ..
        } => {
            let mut e = logged[1].clone();
            if let LedgerEntry::QueryRun { privacy, .. } = &mut e {
                *privacy = Some(datadonor_schemas::privacy::RunPrivacy {
                    researcher_epsilon_left: p.researcher_epsilon_left + 1.0,
                    ..*p
                });
            }
            e
        }
        other => panic!("{other:?}"),
    };
    w.ledger.push(&forged);
    let view =
        verify_ledger(&*w.ledger, &[w.ledger.verifier().expect("vkey")], None).expect("view");
    let audit = audit_queries(&view, None);
    assert_eq!(audit.flagged(), 1, "{}", audit.render_text());
    assert!(audit
        .render_text()
        .contains("researcher's budget left does not follow"));
}

/// The differencing attack: one run before and one after a single donor's donation. Without
/// noise the difference of the sums is that donor's HbA1c total. With the service, the
/// released donor counts and sums move by noise of the stated scale: over many pairs the
/// differences spread as two independent draws of that noise do, so one pair says little about
/// the donor. (OpenDP's sampler has no seed; the bounds below fail with probability below
/// 1e-6.)
#[test]
fn differencing_two_runs_gives_noise_of_the_stated_scale() {
    let w = world(GENEROUS);
    donate(&w, 0..60, 7.0, 2, 1);
    let svc = service(&w);
    let approval = approve(&w, SPEC, 1000, 1.0, 3);
    let pairs = 40;
    let mut before = Vec::new();
    for n in 0..pairs {
        before.push(svc.run(&request(&w, SPEC, &approval, n)).expect("run"));
    }
    // One more donor: two rows of HbA1c 19.0 (the attack's target value).
    donate(&w, 60..61, 19.0, 2, 2);
    let mut after = Vec::new();
    for n in 0..pairs {
        after.push(
            svc.run(&request(&w, SPEC, &approval, 100 + n))
                .expect("run"),
        );
    }
    // The one cell, when the noisy threshold released it (with 60 donors it withholds it in
    // a few runs in a hundred, as it should).
    let col = |t: &ReleasedTable, name: &str| -> Option<f64> {
        let i = t
            .columns
            .iter()
            .position(|c| c.name == name)
            .expect("column");
        t.rows.first().map(|r| r.values[i].expect("value"))
    };
    let scale = before[0].columns[0].noise_scale;
    assert!(scale > 0.5, "donor counts carry noise: scale {scale}");
    let released = |name: &str| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .filter_map(|(b, a)| Some(col(a, name)? - col(b, name)?))
            .collect()
    };
    let diffs = released("donors");
    assert!(
        diffs.len() >= pairs as usize * 3 / 4,
        "only {} of {pairs} pairs released the cell",
        diffs.len()
    );
    let n = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / n;
    let var = diffs.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / (n - 1.0);
    // Two independent discrete Laplace draws of scale b: variance about 2·2b².
    let expected = 4.0 * scale * scale;
    assert!(
        var > expected * 0.25 && var < expected * 4.0,
        "variance of the differences {var}, expected about {expected}"
    );
    let exact = diffs.iter().filter(|d| (**d - 1.0).abs() < 1e-9).count();
    assert!(
        exact < diffs.len() / 2,
        "{exact} of {} differences were the exact 1",
        diffs.len()
    );
    // The sum's difference is not the donor's total (38) but noise around it.
    let sum_diffs = released("sum_hba1c");
    let hits = sum_diffs
        .iter()
        .filter(|d| (**d - 38.0).abs() < 0.5)
        .count();
    assert!(
        hits < sum_diffs.len() / 4,
        "{hits} sums gave the donor's total: {sum_diffs:?}"
    );
    // Every released value carries an error bar.
    assert!(after
        .iter()
        .flat_map(|t| &t.rows)
        .all(|r| r.error95.iter().all(|e| e.is_some_and(|e| e > 0.0))));
}

#[test]
fn requests_that_are_not_a_registered_researchers_are_refused() {
    let w = world(GENEROUS);
    donate(&w, 0..20, 7.0, 1, 1);
    let svc = service(&w);
    let approval = approve(&w, SPEC, 10, 0.5, 4);
    let stranger = SigningKey::generate().expect("key");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "bad-request"),
        (
            request_with(&stranger, SPEC, &approval, [1; 16], NOW),
            401,
            "unknown-researcher",
        ),
        (
            request_with(&w.researcher, SPEC, &approval, [2; 16], NOW - 3600),
            400,
            "stale-request",
        ),
        (
            request_with(
                &w.researcher,
                &SPEC.replace("r@sdu.example", "other@sdu.example"),
                &approval,
                [3; 16],
                NOW,
            ),
            403,
            "wrong-researcher",
        ),
        (
            request_with(
                &w.researcher,
                &SPEC.replace("k = 5", "k = 6"),
                &approval,
                [4; 16],
                NOW,
            ),
            403,
            "not-approved",
        ),
        (
            request_with(
                &w.researcher,
                &SPEC.replace("op = \"sum\"", "op = \"std\""),
                &approval,
                [5; 16],
                NOW,
            ),
            422,
            "invalid-spec",
        ),
    ];
    for (body, status, kind) in cases {
        let e = svc.run(&body).expect_err(kind);
        assert_eq!((e.status, e.kind), (status, kind), "{e}");
    }
    // A replayed request id.
    let body = request_with(&w.researcher, SPEC, &approval, [9; 16], NOW);
    svc.run(&body).expect("first");
    let e = svc.run(&body).expect_err("replayed");
    assert_eq!((e.status, e.kind), (409, "replayed-request"));
    assert_eq!(runs_logged(&w).len(), 1);
}

#[test]
fn the_approval_window_is_judged_by_the_services_clock() {
    let w = world(GENEROUS);
    donate(&w, 0..20, 7.0, 1, 1);
    let approval = approve(&w, SPEC, 10, 0.5, 5);
    // Two days later the approval (valid one day) has expired, whatever the researcher says.
    let late = QueryService::new(ServiceParts {
        study: w.study.clone(),
        approvers: vec![w.steward.public_key()],
        researchers: Researchers::parse(
            &format!("{RESEARCHER} {}\n", w.researcher.public_key().to_base64()),
            &w.dir.path().join("researchers"),
        )
        .expect("researchers"),
        vault: VaultKey::generate(1),
        store: BatchStore::open(&w.batches).expect("store"),
        ledger: Box::new(Shared(w.ledger.clone())),
        state_dir: w.dir.path().join("state-late"),
        clock: Arc::new(Fixed(NOW + 2 * 86_400)),
    })
    .expect("service");
    let body = request_with(&w.researcher, SPEC, &approval, [1; 16], NOW + 2 * 86_400);
    let e = late.run(&body).expect_err("expired");
    assert_eq!(e.kind, "not-approved");
    assert!(e.detail.contains("expired"), "{e}");
}

#[test]
fn a_study_without_a_privacy_policy_is_not_served() {
    let w = world(GENEROUS);
    let mut study = w.study.clone();
    study.privacy = None;
    let e = QueryService::new(ServiceParts {
        study,
        approvers: vec![w.steward.public_key()],
        researchers: Researchers::default(),
        vault: VaultKey::generate(1),
        store: BatchStore::open(&w.batches).expect("store"),
        ledger: Box::new(Shared(w.ledger.clone())),
        state_dir: w.dir.path().join("state"),
        clock: Arc::new(Fixed(NOW)),
    })
    .expect_err("refused");
    assert!(e.to_string().contains("privacy"), "{e}");
}

/// The service owns the intake's ledger client, whose private runtime used to panic when the
/// service was dropped on an async task (at shutdown of the HTTPS server): dropping it there is
/// fine now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_client_can_be_dropped_on_an_async_task() {
    let dir = tempfile::tempdir().expect("dir");
    datadonor_intake::testkit::init_test_dir(dir.path()).expect("init");
    let ledger = datadonor_analytics::ledger_http::HttpLedger::with_ca_file(
        "https://127.0.0.1:9",
        zeroize::Zeroizing::new("token".to_string()),
        None,
        &dir.path().join("tls/ca.pem"),
    )
    .expect("client");
    let task = tokio::spawn(async move { drop(ledger) });
    task.await.expect("dropped without a panic");
}

/// Over HTTPS, a request body over the limit is a `413 body-too-large` problem document (not the
/// framework's plain text), and nothing is run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_a_problem_document() {
    let w = world(GENEROUS);
    let tls = tempfile::tempdir().expect("dir");
    datadonor_intake::testkit::init_test_dir(tls.path()).expect("development certificates");
    let running = datadonor_analytics::service::start(
        Arc::new(service(&w)),
        "127.0.0.1:0".parse().expect("addr"),
        &tls.path().join("tls/server.pem"),
        &tls.path().join("tls/server.key"),
    )
    .await
    .expect("service");
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(tls.path().join("tls/ca.pem")).expect("ca"))
            .expect("pem");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/v1/queries", running.addr().port());
    let big = vec![b'{'; datadonor_schemas::privacy::MAX_REQUEST_LEN + 1];
    for body in [big.clone(), [big.as_slice(), b"}}}}"].concat()] {
        let r = http.post(&url).body(body).send().await.expect("send");
        assert_eq!(r.status().as_u16(), 413);
        assert_eq!(
            r.headers()["content-type"].to_str().expect("ascii"),
            "application/problem+json"
        );
        let p: serde_json::Value = r.json().await.expect("problem document");
        assert_eq!(p["type"], "urn:datadonor:problem:body-too-large");
    }
    assert!(runs_logged(&w).is_empty(), "nothing was run");
    running.shutdown().await;
}
