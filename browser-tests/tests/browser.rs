//! The donor's app in Debian's chromium, driven through chromedriver: the whole flow against a
//! live in-process intake and its pseudonymisers, once in English and once in Danish (switched
//! with the page's own link), with one row left out, the donation, the verified receipt, "my
//! donations" and the withdrawal. Every page is checked with axe-core (no `serious` or
//! `critical` violation), the keyboard reaches the skip link with a visible focus outline, and
//! a screenshot of each step is written to `docs/screenshots/`.
//!
//! The donated rows are checked in the sealed batch itself, opened with the demo vault key.
//! Needs `chromium` and `chromedriver` (`$CHROMIUM`, `$CHROMEDRIVER`, default `/usr/bin/...`)
//! and axe-core's `axe.min.js` at `$DATADONOR_AXE_JS`; `.ci/run` installs all three and runs
//! `cargo test --workspace --test browser -- --ignored`. Run with `--ignored` without them, the
//! test fails and says what is missing.

#[path = "../../donor-client/tests/support/live.rs"]
mod live;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datadonor_client::app::i18n::Lang;
use datadonor_client::app::{self, AppConfig, RunningApp};
use datadonor_client::client::{Intake, IntakeConfig};
use datadonor_client::keystore::Keystore;
use datadonor_client::TrustAnchors;
use datadonor_schemas::ledger::LedgerEntry;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CPR: &str = "010172-1234";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn export_file() -> PathBuf {
    let p = repo("testdata/data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json");
    assert!(p.is_file(), "test data missing: {}", p.display());
    // chromedriver takes only canonical paths for a file input.
    p.canonicalize().expect("canonical path")
}

fn tool(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        p.is_file(),
        "{} not found (set ${var}); install it with `apt-get install -y chromium chromium-driver`",
        p.display()
    );
    p
}

fn axe_source() -> String {
    let path = std::env::var_os("DATADONOR_AXE_JS").unwrap_or_else(|| {
        panic!("DATADONOR_AXE_JS is not set: it must name axe-core's axe.min.js (.ci/run installs it with npm)")
    });
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("DATADONOR_AXE_JS={}: {e}", PathBuf::from(&path).display()))
}

/// The chromedriver process this test started; killed (by its handle) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new(tool("CHROMEDRIVER", "/usr/bin/chromedriver"))
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let chromium = tool("CHROMIUM", "/usr/bin/chromium");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.to_str().expect("utf-8 path"),
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1200,900",
                "--lang=en-GB",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": { "intl.accept_languages": "en-GB,en" }
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!("an object literal")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver")
}

/// Wait until the browser shows `path` of the app.
async fn wait_path(c: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = c.current_url().await.expect("current url");
        if url.path() == path {
            return;
        }
        if Instant::now() >= deadline {
            let said = match c.find(Locator::Css("main")).await {
                Ok(main) => main.text().await.unwrap_or_default(),
                Err(_) => c.source().await.unwrap_or_default(),
            };
            panic!("expected {path}, the browser is at {url}, showing:\n{said}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// axe-core on the current page: no `serious` or `critical` violation.
async fn axe(c: &Client, source: &str, page: &str) {
    c.execute(&format!("{source}\n;return typeof axe;"), vec![])
        .await
        .expect("inject axe-core");
    let out = c
        .execute_async(
            r#"var done = arguments[arguments.length - 1];
               axe.run(document, { resultTypes: ["violations"] }).then(function (r) {
                 done(JSON.stringify(r.violations.map(function (v) {
                   return { id: v.id, impact: v.impact, help: v.help,
                            nodes: v.nodes.map(function (n) { return n.target.join(" "); }) };
                 })));
               }, function (e) { done("axe failed: " + e); });"#,
            vec![],
        )
        .await
        .expect("run axe-core");
    let text = out.as_str().expect("axe's answer").to_string();
    let violations: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{page}: {text}"));
    let grave: Vec<&Value> = violations
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(
        grave.is_empty(),
        "{page}: axe-core finds serious or critical violations: {}",
        serde_json::to_string_pretty(&grave).unwrap_or_default()
    );
}

/// A screenshot of the whole page.
async fn shot(c: &Client, dir: &Path, name: &str) {
    let height = c
        .execute(
            "window.scrollTo(0, 0); return Math.ceil(document.documentElement.scrollHeight);",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(900)
        .clamp(600, 4000);
    c.set_window_size(1200, u32::try_from(height + 120).unwrap_or(900))
        .await
        .expect("resize");
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    c.set_window_size(1200, 900).await.expect("resize back");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Click `css` and wait until the browser has left the page (a form post or a link) and the
/// next one is loaded.
async fn click_nav(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.expect("html");
    click(c, css).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "{css}: the page did not change");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while c
        .execute("return document.readyState;", vec![])
        .await
        .ok()
        .and_then(|v| v.as_str().map(|s| s == "complete"))
        != Some(true)
    {
        assert!(
            Instant::now() < deadline,
            "{css}: the next page did not load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// One page: axe-core, then the screenshot.
async fn page(c: &Client, axe_js: &str, dir: &Path, name: &str) {
    axe(c, axe_js, name).await;
    shot(c, dir, name).await;
}

/// The keyboard: Tab from the top of the page lands on the skip link, whose focus is visible.
async fn keyboard_reaches_the_skip_link(c: &Client) {
    let tab = KeyActions::new("keyboard".to_string())
        .then(KeyAction::Down {
            value: Key::Tab.into(),
        })
        .then(KeyAction::Up {
            value: Key::Tab.into(),
        });
    c.perform_actions(tab).await.expect("press Tab");
    let focus = c
        .execute(
            r#"var e = document.activeElement; var s = getComputedStyle(e);
               return [e.className, s.outlineStyle, parseFloat(s.outlineWidth), e.getBoundingClientRect().left >= 0];"#,
            vec![],
        )
        .await
        .expect("focus");
    assert_eq!(focus[0], "skip", "Tab reaches the skip link first: {focus}");
    assert_ne!(focus[1], "none", "the focus is visible: {focus}");
    assert!(focus[2].as_f64().unwrap_or(0.0) >= 2.0, "{focus}");
    assert_eq!(
        focus[3], true,
        "the focused skip link is on screen: {focus}"
    );
}

struct Live {
    setup: live::Live,
    intake: datadonor_intake::RunningIntake,
    pem: Vec<u8>,
}

async fn live_intake() -> Live {
    let (setup, config) = live::prepare().await;
    let intake = datadonor_intake::start(config).await.expect("start intake");
    let pem = setup.trust_pem(&intake.ca_pem_path());
    Live { setup, intake, pem }
}

impl Live {
    /// The periods of the rows donated under `record`, read from the sealed batch opened with
    /// the demo vault key (`init` writes it to `vault-private/vault.key`; the intake never reads
    /// it).
    fn donated_periods(&self, study: &str, batch_id: &str, record: &[u8; 16]) -> Vec<String> {
        use datadonor_schemas::study::{CONSENT_COLUMN, PERIOD_COLUMN};
        let dir = &self.setup.intake_dir;
        let vault =
            datadonor_analytics::vault::VaultKey::load(&dir.join("vault-private/vault.key"))
                .expect("the demo vault key");
        let path = dir.join(format!("batches/{study}/{batch_id}.ddb"));
        let opened = datadonor_analytics::sealed::open_batch_file(&path, &vault).expect("opens");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(opened.plaintext.to_vec()),
        )
        .expect("parquet")
        .build()
        .expect("reader");
        let want = hex::encode(record);
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.expect("batch");
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
                    .unwrap_or_else(|| panic!("column {name}"))
                    .clone()
            };
            let (periods, records) = (col(PERIOD_COLUMN), col(CONSENT_COLUMN));
            for i in 0..batch.num_rows() {
                if records.value(i) == want {
                    out.push(periods.value(i).to_string());
                }
            }
        }
        out
    }

    fn entry(&self, i: u64) -> LedgerEntry {
        let state = self
            .intake
            .state()
            .sequencing()
            .expect("a sequencer")
            .state
            .read()
            .expect("ledger lock");
        let entries = state
            .entries(i, i + 1)
            .expect("a readable ledger")
            .expect("a published entry");
        LedgerEntry::from_bytes(&entries[0]).expect("ledger entry")
    }

    async fn app(&self, home: &Path) -> RunningApp {
        let client = Intake::new(IntakeConfig::new(
            self.intake.base_url(),
            TrustAnchors::CaPem(self.pem.clone()),
        ))
        .expect("intake client");
        let ks = Keystore::open(home).expect("keystore");
        app::start(AppConfig::new(client, ks)).await.expect("app")
    }
}

/// The whole flow in `lang`, one screenshot per step named `<lang>-<n>-<step>`.
async fn walk(live: &Live, driver: &Driver, lang: Lang, axe_js: &str, shots: &Path) {
    let t = lang.strings();
    let home = tempfile::tempdir().expect("keystore dir");
    let profile = tempfile::tempdir().expect("browser profile");
    let app = live.app(home.path()).await;
    let c = browser(driver, profile.path()).await;
    let name = |n: u32, step: &str| format!("{}-{n}-{step}", lang.tag());

    c.goto(&app.start_url()).await.expect("open the app");
    wait_path(&c, "/").await;
    if lang == Lang::Da {
        // The browser asks for English: the page's own switch link changes the language.
        click_nav(&c, "a.lang").await;
        wait_path(&c, "/").await;
    } else {
        keyboard_reaches_the_skip_link(&c).await;
    }
    assert_eq!(
        c.find(Locator::Css("html"))
            .await
            .expect("html")
            .attr("lang")
            .await
            .expect("lang"),
        Some(lang.tag().to_string())
    );
    assert_eq!(text(&c, "h1").await, t.study_title);
    page(&c, axe_js, shots, &name(1, "study")).await;
    click_nav(&c, "main form button[type=submit]").await;

    wait_path(&c, "/export").await;
    assert_eq!(text(&c, "h1").await, t.export_title);
    page(&c, axe_js, shots, &name(2, "export")).await;
    c.find(Locator::Id("export"))
        .await
        .expect("file input")
        .send_keys(export_file().to_str().expect("utf-8 path"))
        .await
        .expect("choose the file");
    click_nav(&c, "#upload button[type=submit]").await;

    wait_path(&c, "/identity").await;
    assert_eq!(text(&c, "h1").await, t.identity_title);
    page(&c, axe_js, shots, &name(3, "identity")).await;
    // A wrong CPR number first: the message, and the number is not shown back.
    c.find(Locator::Id("cpr"))
        .await
        .expect("cpr")
        .send_keys("320172-1234")
        .await
        .expect("type");
    click_nav(&c, "main form button[type=submit]").await;
    let alert = text(&c, "[role=alert]").await;
    assert!(alert.contains(t.cpr_date), "{alert}");
    assert!(!c.source().await.expect("source").contains("320172"));
    c.find(Locator::Id("cpr"))
        .await
        .expect("cpr")
        .send_keys(CPR)
        .await
        .expect("type");
    let postcode = c.find(Locator::Id("postcode")).await.expect("postcode");
    postcode.clear().await.expect("clear");
    postcode.send_keys("5000").await.expect("type");
    click_nav(&c, "main form button[type=submit]").await;

    wait_path(&c, "/preview").await;
    assert_eq!(text(&c, "h1").await, t.preview_title);
    let boxes = c
        .find_all(Locator::Css("input[name=keep]"))
        .await
        .expect("row checkboxes");
    assert!(boxes.len() >= 2, "the export gives several rows");
    let mut periods = Vec::new();
    for i in 0..boxes.len() {
        let cell = c
            .find(Locator::XPath(&format!(
                "//input[@id='keep-{i}']/ancestor::tr/th"
            )))
            .await
            .expect("the row's period");
        periods.push(cell.text().await.expect("text").trim().to_string());
    }
    boxes[0].click().await.expect("untick the first row");
    assert!(!boxes[0].is_selected().await.expect("state"));
    page(&c, axe_js, shots, &name(4, "preview")).await;
    click_nav(&c, "main form button[type=submit]").await;

    wait_path(&c, "/consent").await;
    assert_eq!(text(&c, "h1").await, t.consent_title);
    assert!(
        c.find(Locator::Css(".notice")).await.is_ok(),
        "the notice text is shown"
    );
    click(&c, "#purpose-0").await;
    page(&c, axe_js, shots, &name(5, "consent")).await;
    click_nav(&c, "button.primary").await;

    wait_path(&c, "/receipt").await;
    assert_eq!(text(&c, "h1").await, t.receipt_title);
    page(&c, axe_js, shots, &name(6, "receipt")).await;
    let index: u64 = c
        .find(Locator::Id("receipt-entry"))
        .await
        .expect("entry")
        .attr("data-ledger-index")
        .await
        .expect("attr")
        .and_then(|v| v.parse().ok())
        .expect("ledger index");
    match live.entry(index) {
        LedgerEntry::DonationAccepted {
            rows,
            study_id,
            batch_id,
            consent_record_id,
            ..
        } => {
            assert_eq!(rows as usize, boxes.len() - 1, "the unticked row stayed");
            // What the steward's vault key opens: every kept row, and not the unticked one.
            let donated = live.donated_periods(study_id.as_str(), &batch_id, &consent_record_id);
            assert_eq!(donated.len(), boxes.len() - 1, "{donated:?}");
            assert!(
                !donated.contains(&periods[0]),
                "the unticked row {} is not in the batch: {donated:?}",
                periods[0]
            );
            for p in &periods[1..] {
                assert!(
                    donated.contains(p),
                    "the kept row {p} is in the batch: {donated:?}"
                );
            }
        }
        other => panic!("entry {index}: {other:?}"),
    }

    click_nav(&c, "header nav a[href='/donations']").await;
    wait_path(&c, "/donations").await;
    assert_eq!(text(&c, "h1").await, t.donations_title);
    assert!(text(&c, "td .ok").await.starts_with('\u{2713}'));
    page(&c, axe_js, shots, &name(7, "donations")).await;
    click_nav(&c, "a[href^='/withdraw']").await;

    wait_path(&c, "/withdraw").await;
    assert_eq!(text(&c, "h1").await, t.withdraw_title);
    page(&c, axe_js, shots, &name(8, "withdraw")).await;
    click_nav(&c, "button.danger").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while text(&c, "h1").await != t.withdrawn_title {
        assert!(Instant::now() < deadline, "no withdrawal page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page(&c, axe_js, shots, &name(9, "withdrawn")).await;
    let withdrawn = live
        .intake
        .state()
        .sequencing()
        .expect("a sequencer")
        .state
        .read()
        .expect("lock")
        .published_size();
    assert!(matches!(
        live.entry(withdrawn - 1),
        LedgerEntry::ConsentWithdrawn { .. }
    ));

    c.close().await.expect("close the browser");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium and chromedriver: run by .ci/run"]
async fn the_donors_app_in_chromium_in_both_languages() {
    let axe_js = axe_source();
    let shots = repo("docs/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let live = live_intake().await;
    let driver = start_driver().await;
    walk(&live, &driver, Lang::En, &axe_js, &shots).await;
    walk(&live, &driver, Lang::Da, &axe_js, &shots).await;
}
