//! `datadonor app`, driven over HTTP as a browser would (cookies, forms, a multipart upload)
//! against the recording test intake and its three pseudonymiser instances: choose the study,
//! upload a published FHIR bundle, give the CPR number and postcode, untick a row, consent,
//! donate, read the verified receipt, see it re-verified under "my donations", withdraw. The
//! intake's recording shows that the unticked row did not leave. Then the server's defences:
//! the token, the cookie, the Host and Origin checks, the headers, the loopback listener, the
//! upload limit, and the two languages.

#[path = "support/live.rs"]
mod live;
mod support;

use std::path::PathBuf;

use datadonor_client::app::{self, AppConfig, RunningApp, CONTENT_SECURITY_POLICY};
use datadonor_client::client::{Intake, IntakeConfig};
use datadonor_client::keystore::Keystore;
use datadonor_client::session::IntakeSession;
use datadonor_client::TrustAnchors;
use datadonor_schemas::receipt::ReceiptKind;
use reqwest::header::{self, HeaderMap};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use support::TestIntake;

const CPR: &str = "010172-1234";

fn bundle() -> PathBuf {
    support::testdata("data/fhir/dab4861f-04d5-4a05-8bfc-7e188353feac.transaction.json")
}

fn intake(server: &TestIntake) -> Intake {
    let mut c = IntakeConfig::new(&server.url, TrustAnchors::CaPem(server.ca_pem.clone()));
    c.steward_key = Some(server.steward);
    Intake::new(c).expect("intake")
}

struct Setup {
    server: TestIntake,
    app: RunningApp,
    home: tempfile::TempDir,
    http: reqwest::Client,
}

async fn setup_with(max_upload: u64) -> Setup {
    let server = TestIntake::start().await;
    let home = tempfile::tempdir().expect("keystore dir");
    let ks = Keystore::open(home.path()).expect("keystore");
    let config = AppConfig::new(intake(&server), ks).with_max_upload_bytes(max_upload);
    let app = app::start(config).await.expect("start the app");
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("http client");
    Setup {
        server,
        app,
        home,
        http,
    }
}

async fn setup() -> Setup {
    setup_with(app::DEFAULT_MAX_UPLOAD).await
}

/// The session cookie (`name=value`) from a `Set-Cookie` header, with its attributes checked.
fn session_cookie(headers: &HeaderMap) -> String {
    let set = headers
        .get(header::SET_COOKIE)
        .expect("Set-Cookie")
        .to_str()
        .expect("ascii");
    assert!(set.starts_with("datadonor_session="), "{set}");
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().expect("pair").to_string()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A browser-like client of the app: the session cookie and the app's own origin.
struct Browser<'a> {
    s: Target<'a>,
    cookie: String,
    lang: &'static str,
}

/// The app and the client a [`Browser`] uses.
#[derive(Clone, Copy)]
struct Target<'a> {
    app: &'a RunningApp,
    http: &'a reqwest::Client,
}

impl<'a> Browser<'a> {
    async fn open(s: &'a Setup) -> Browser<'a> {
        Self::open_app(&s.app, &s.http).await
    }

    async fn open_app(app: &'a RunningApp, http: &'a reqwest::Client) -> Browser<'a> {
        let s = Target { app, http };
        let r = s
            .http
            .get(s.app.start_url())
            .send()
            .await
            .expect("token exchange");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&r), "/");
        let cookie = session_cookie(r.headers());
        Browser {
            s,
            cookie,
            lang: "en",
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.s.app.base_url())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.s
            .http
            .get(self.url(path))
            .header(header::COOKIE, &self.cookie)
            .header(header::ACCEPT_LANGUAGE, self.lang)
            .send()
            .await
            .expect("GET")
    }

    async fn get_text(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.text().await.expect("body")
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.s
            .http
            .post(self.url(path))
            .header(header::COOKIE, &self.cookie)
            .header(header::ORIGIN, self.s.app.base_url())
            .header(header::ACCEPT_LANGUAGE, self.lang)
            .form(form)
            .send()
            .await
            .expect("POST")
    }

    async fn upload(&self, name: &str, bytes: &[u8]) -> reqwest::Response {
        let boundary = "datadonor-test-boundary-7d1c";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"export\"; filename=\"{name}\"\r\nContent-Type: application/json\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.s
            .http
            .post(self.url("/export"))
            .header(header::COOKIE, &self.cookie)
            .header(header::ORIGIN, self.s.app.base_url())
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("upload")
    }
}

fn assert_redirect(r: &reqwest::Response, to: &str) {
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "expected a redirect to {to}"
    );
    assert_eq!(location(r), to);
}

/// The texts of `<th scope="row">…</th>` cells: the periods of the preview's rows.
fn periods(html: &str) -> Vec<String> {
    html.split("<th scope=\"row\">")
        .skip(1)
        .filter_map(|s| s.split_once("</th>").map(|(p, _)| p.to_string()))
        .collect()
}

/// Up to the step where the preview is shown: the periods of its rows.
async fn to_preview(b: &Browser<'_>) -> Vec<String> {
    let page = b.get_text("/").await;
    assert!(page.contains("t2d-dk"), "the study list names the study");
    assert_redirect(&b.post_form("/", &[("study", "t2d-dk")]).await, "/export");
    let export = std::fs::read(bundle()).expect("read the bundle");
    assert_redirect(&b.upload("bundle.json", &export).await, "/identity");
    assert_redirect(
        &b.post_form("/identity", &[("cpr", CPR), ("postcode", "5000")])
            .await,
        "/preview",
    );
    let preview = b.get_text("/preview").await;
    assert!(!preview.contains("010172"), "the CPR number is never shown");
    let periods = periods(&preview);
    assert_eq!(
        preview.matches("name=\"keep\"").count(),
        periods.len(),
        "one checkbox per row"
    );
    periods
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_flow_donates_only_the_rows_kept_and_withdraws() {
    let s = setup().await;
    assert!(s.app.local_addr().ip().is_loopback());
    let b = Browser::open(&s).await;
    let periods = to_preview(&b).await;
    assert!(
        periods.len() >= 2,
        "the bundle gives several rows: {periods:?}"
    );

    // Untick the first row.
    let left_out = periods[0].clone();
    let keep: Vec<String> = (1..periods.len()).map(|i| i.to_string()).collect();
    let form: Vec<(&str, &str)> = keep.iter().map(|k| ("keep", k.as_str())).collect();
    assert_redirect(&b.post_form("/preview", &form).await, "/consent");
    let preview = b.get_text("/preview").await;
    assert_eq!(
        preview.matches(" checked").count(),
        periods.len() - 1,
        "the choice is kept"
    );

    // Consent: every purpose of the study is offered, and nothing is sent without one.
    let consent = b.get_text("/consent").await;
    for needle in [
        "t2d-epidemiology",
        "t2d-care-quality",
        "Syddansk Sundhedsinnovation",
        "3650 days",
        &hex::encode(support::example_study().notice_sha256),
    ] {
        assert!(consent.contains(needle), "consent page lacks {needle}");
    }
    assert!(consent.contains(&format!("donate {} rows", periods.len() - 1)));
    let r = b.post_form("/consent", &[("expires_days", "365")]).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("Tick at least one purpose"));
    let r = b
        .post_form(
            "/consent",
            &[("purpose", "t2d-epidemiology"), ("expires_days", "99999")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        s.server.donations(),
        0,
        "nothing sent before a valid consent"
    );

    // Donate.
    let r = b
        .post_form(
            "/consent",
            &[("purpose", "t2d-epidemiology"), ("expires_days", "365")],
        )
        .await;
    assert_redirect(&r, "/receipt");
    let receipt = b.get_text("/receipt").await;
    assert!(receipt.contains("your donation is recorded"), "{receipt}");
    assert!(receipt.contains(&format!("{} rows were donated", periods.len() - 1)));
    assert_eq!(s.server.donations(), 1);

    // What the intake received: every row but the unticked one.
    let donation = s
        .server
        .recorded()
        .into_iter()
        .find(|r| r.path == "/v1/donations")
        .expect("a donation was received");
    let batch = datadonor_schemas::study::rows_from_ipc(&donation.opened[2], 100_000)
        .expect("the rows as sent");
    assert_eq!(batch.num_rows(), periods.len() - 1);
    let rendered = String::from_utf8(donation.opened[3].clone()).expect("utf-8");
    let cells: Vec<&str> = rendered.lines().collect();
    assert!(
        !cells.contains(&left_out.as_str()),
        "the unticked row ({left_out}) left the device"
    );
    for p in &periods[1..] {
        assert!(cells.contains(&p.as_str()), "kept row {p} is missing");
    }

    // The stored receipt verifies against the intake's current tree.
    let ks = Keystore::open(s.home.path()).expect("keystore");
    let stored = ks.receipts().expect("receipts");
    assert_eq!(stored.len(), 1);
    let donation = stored[0].1.clone();
    assert_eq!(donation.kind, ReceiptKind::Donation);
    let session = IntakeSession::connect(intake(&s.server), None)
        .await
        .expect("connect");
    let v = session.verify(&donation, None).await.expect("verify");
    assert!(v.current.is_some());

    // My donations: re-verified, with a withdrawal behind a confirmation page.
    let mine = b.get_text("/donations").await;
    assert!(
        mine.contains("Verified: in the current ledger of"),
        "{mine}"
    );
    let record = donation.consent_record_id.clone();
    let confirm = b.get_text(&format!("/withdraw?record={record}")).await;
    assert!(confirm.contains("Yes, withdraw"));
    assert!(
        !s.server.is_withdrawn(&record_bytes(&record)),
        "the confirmation page withdraws nothing"
    );
    let r = b.post_form("/withdraw", &[("record", &record)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.expect("body").contains("Consent withdrawn"));
    assert!(s.server.is_withdrawn(&record_bytes(&record)));
    let mine = b.get_text("/donations").await;
    assert!(mine.contains("Withdrawn"));
    assert!(
        !mine.contains("/withdraw?record="),
        "nothing left to withdraw"
    );
    assert_eq!(ks.receipts().expect("receipts").len(), 2);

    // The export is gone from the app's private directory after the donation.
    let r = b.get("/identity").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the flow starts again");
    s.app.shutdown().await;
}

fn record_bytes(hex_id: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut out).expect("record id");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cpr_number_is_validated_and_never_shown_back() {
    let s = setup().await;
    let b = Browser::open(&s).await;
    assert_redirect(&b.post_form("/", &[("study", "t2d-dk")]).await, "/export");
    // An export naming the donor's CPR number (010172-1234).
    let export = br#"{"resourceType":"Bundle","type":"collection","entry":[
  {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1972-01-01",
     "identifier":[{"system":"urn:oid:1.2.208.176.1.2","value":"010172-1234"}],
     "address":[{"postalCode":"8000"}]}},
  {"resource":{"resourceType":"Observation","subject":{"reference":"urn:uuid:p1"},"effectiveDateTime":"2021-03-04",
     "code":{"coding":[{"system":"http://loinc.org","code":"39156-5"}]},
     "valueQuantity":{"value":27.5,"unit":"kg/m2","system":"http://unitsofmeasure.org","code":"kg/m2"}}}]}"#;
    assert_redirect(&b.upload("export.json", export).await, "/identity");
    for (cpr, postcode, says) in [
        ("7654321", "", "A CPR number is 10 digits"),
        ("320172-9876", "", "not a valid date"),
        ("010172-1234", "50x0", "A Danish postcode is 4 digits"),
        // Not the CPR number the export names: said without showing either number.
        ("010172-9876", "", "does not match the one in the export"),
    ] {
        let r = b
            .post_form("/identity", &[("cpr", cpr), ("postcode", postcode)])
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{cpr}");
        let page = r.text().await.expect("body");
        assert!(page.contains(says), "{cpr}: expected {says:?}");
        let digits: String = cpr.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !page.contains(cpr)
                && !page.contains(&digits)
                && !page.contains(digits.get(..6).unwrap_or(&digits)),
            "{cpr} shown back"
        );
        assert!(!page.contains("\u{2026}-"), "no digits of either number");
    }
    // The right number: on to the preview, which shows no digit of it either.
    assert_redirect(
        &b.post_form("/identity", &[("cpr", "010172-1234"), ("postcode", "")])
            .await,
        "/preview",
    );
    let preview = b.get_text("/preview").await;
    assert_eq!(periods(&preview), ["2021-03"]);
    assert!(!preview.contains("010172") && !preview.contains("1234"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_the_cookie_host_and_origin_guard_every_request() {
    let s = setup().await;
    let base = s.app.base_url();
    assert!(s.app.local_addr().ip().is_loopback());
    assert!(base.starts_with("http://127.0.0.1:"));
    let token = s
        .app
        .start_url()
        .split_once("token=")
        .map(|(_, t)| t.to_string())
        .expect("token");
    assert!(token.len() >= 32, "at least 128 bits");

    // Without the cookie: 403 everywhere, with the security headers.
    for path in [
        "/",
        "/donations",
        "/static/app.css",
        "/consent",
        "/lang?to=da",
    ] {
        let r = s
            .http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert_security_headers(r.headers());
    }
    let r = s
        .http
        .post(format!("{base}/"))
        .form(&[("study", "t2d-dk")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A wrong token, and a forged cookie.
    let r = s
        .http
        .get(format!("{base}/?token={}", "0".repeat(64)))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let r = s
        .http
        .get(format!("{base}/donations"))
        .header(
            header::COOKIE,
            format!("datadonor_session={}", "0".repeat(64)),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The right token, once: a foreign Host cannot exchange it.
    let r = s
        .http
        .get(s.app.start_url())
        .header(header::HOST, "evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b = Browser::open(&s).await;
    let r = s.http.get(s.app.start_url()).send().await.expect("again");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "the token works once");

    // With the cookie: pages, with the headers.
    let r = b.get("/donations").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_security_headers(r.headers());
    let css = b.get("/static/app.css").await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(css.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("type")
        .starts_with("text/css"));
    // `localhost:<port>` is the same app.
    let port = s.app.local_addr().port();
    let r = s
        .http
        .get(format!("{base}/donations"))
        .header(header::COOKIE, &b.cookie)
        .header(header::HOST, format!("localhost:{port}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);

    // A foreign Host (DNS rebinding), even with the cookie.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "127.0.0.1".to_string(),
    ] {
        let r = s
            .http
            .get(format!("{base}/donations"))
            .header(header::COOKIE, &b.cookie)
            .header(header::HOST, &host)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "Host {host}");
        assert_security_headers(r.headers());
    }

    // A foreign Origin on a POST, even with the cookie; the app's own origin passes.
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        &format!("https://127.0.0.1:{port}"),
    ] {
        let r = s
            .http
            .post(format!("{base}/"))
            .header(header::COOKIE, &b.cookie)
            .header(header::ORIGIN, origin)
            .form(&[("study", "t2d-dk")])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "Origin {origin}");
    }
    // `Origin: null` (what a browser sends under `no-referrer`) passes only with the
    // browser-set `Sec-Fetch-Site: same-origin`, which a cross-site page's request lacks.
    for (site, status) in [
        (None, StatusCode::FORBIDDEN),
        (Some("cross-site"), StatusCode::FORBIDDEN),
        (Some("same-site"), StatusCode::FORBIDDEN),
        (Some("same-origin"), StatusCode::SEE_OTHER),
    ] {
        let mut req = s
            .http
            .post(format!("{base}/"))
            .header(header::COOKIE, &b.cookie)
            .header(header::ORIGIN, "null")
            .form(&[("study", "t2d-dk")]);
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        let r = req.send().await.expect("post");
        assert_eq!(r.status(), status, "Origin null, Sec-Fetch-Site {site:?}");
    }
    assert_redirect(&b.post_form("/", &[("study", "t2d-dk")]).await, "/export");
}

fn assert_security_headers(h: &HeaderMap) {
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_over_the_limit_is_refused_with_a_reason() {
    let s = setup_with(4096).await;
    let b = Browser::open(&s).await;
    assert_redirect(&b.post_form("/", &[("study", "t2d-dk")]).await, "/export");
    let export = std::fs::read(bundle()).expect("bundle");
    assert!(export.len() > 4096);
    let r = b.upload("bundle.json", &export).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().await.expect("body").contains("larger than"));
    let r = b.upload("empty.json", b"").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Nothing was kept: the next step is not reachable.
    assert_redirect(&b.get("/identity").await, "/export");
    // A small file within the limit is accepted, and a wrong format is said so at the next step.
    assert_redirect(&b.upload("notes.txt", b"hello").await, "/identity");
    let r = b
        .post_form("/identity", &[("cpr", CPR), ("postcode", "")])
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("The export could not be read"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_speak_danish_or_english() {
    let s = setup().await;
    let mut b = Browser::open(&s).await;
    b.lang = "da-DK,da;q=0.9,en;q=0.5";
    let da = b.get_text("/").await;
    assert!(da.contains("<html lang=\"da\">"));
    assert!(da.contains("Vælg et studie"));
    assert!(da.contains("Mine donationer"));
    b.lang = "en-GB,en;q=0.9";
    let en = b.get_text("/").await;
    assert!(en.contains("<html lang=\"en\">"));
    assert!(en.contains("Choose a study"));
    assert!(!en.contains("Vælg et studie"));

    // The switch link sets a cookie that wins over Accept-Language.
    let r = b.get("/lang?to=da&next=/donations").await;
    assert_redirect(&r, "/donations");
    let set = r.headers()[header::SET_COOKIE].to_str().expect("cookie");
    assert!(set.starts_with("datadonor_lang=da"));
    let lang = set.split(';').next().expect("pair").to_string();
    let page = s
        .http
        .get(format!("{}/donations", s.app.base_url()))
        .header(header::COOKIE, format!("{}; {lang}", b.cookie))
        .header(header::ACCEPT_LANGUAGE, "en")
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(page.contains("Ingen donationer endnu"), "{page}");
    assert!(page.contains("href=\"/lang?to=en&amp;next=/donations\""));
    // An unknown language or a foreign return address.
    assert_eq!(b.get("/lang?to=xx").await.status(), StatusCode::BAD_REQUEST);
    assert_redirect(&b.get("/lang?to=en&next=//evil.example").await, "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_donates_to_a_real_intake_and_withdraws() {
    let (live, config) = live::prepare().await;
    let intake_dir = live.intake_dir.clone();
    let home = tempfile::tempdir().expect("keystore dir");
    let intake = datadonor_intake::start(config).await.expect("start intake");
    let pem = live.trust_pem(&intake.ca_pem_path());
    let client = Intake::new(IntakeConfig::new(
        intake.base_url(),
        TrustAnchors::CaPem(pem),
    ))
    .expect("intake client");
    let ks = Keystore::open(home.path()).expect("keystore");
    let app = app::start(AppConfig::new(client, ks)).await.expect("app");
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("http");
    let b = Browser::open_app(&app, &http).await;
    let periods = to_preview(&b).await;
    assert!(periods.len() >= 2, "{periods:?}");
    let keep: Vec<String> = (0..periods.len() - 1).map(|i| i.to_string()).collect();
    let form: Vec<(&str, &str)> = keep.iter().map(|k| ("keep", k.as_str())).collect();
    assert_redirect(&b.post_form("/preview", &form).await, "/consent");
    let consent = b.get_text("/consent").await;
    assert!(
        !consent.contains("could not be fetched"),
        "the intake serves the notice text: {consent}"
    );
    let r = b
        .post_form(
            "/consent",
            &[
                ("purpose", "t2d-epidemiology"),
                ("purpose", "t2d-care-quality"),
                ("expires_days", "30"),
                ("notice_language", "en"),
            ],
        )
        .await;
    assert_redirect(&r, "/receipt");
    // The study's steward key and bundle were pinned on first use, as the CLI does.
    let pin = datadonor_client::pins::pinned_study(
        &Keystore::open(home.path()).expect("keystore"),
        &intake.base_url(),
        &datadonor_schemas::study::StudyId::new("t2d-dk").expect("id"),
    )
    .expect("key store")
    .expect("the study is pinned after the donation");
    assert_eq!(
        pin.steward_key.to_base64(),
        std::fs::read_to_string(intake_dir.join("steward/steward.key.pub"))
            .expect("steward key")
            .trim()
    );
    let receipt = b.get_text("/receipt").await;
    let index: u64 = receipt
        .split_once("data-ledger-index=\"")
        .and_then(|(_, r)| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("ledger index on the receipt page");

    let entry = |i: u64| {
        let state = intake
            .state()
            .sequencing()
            .expect("a sequencer")
            .state
            .read()
            .expect("ledger lock");
        let size = state.published_size();
        assert!(size > i, "published size {size}");
        let entries = state
            .entries(i, i + 1)
            .expect("a readable ledger")
            .expect("entry");
        datadonor_schemas::ledger::LedgerEntry::from_bytes(&entries[0]).expect("ledger entry")
    };
    let record = match entry(index) {
        datadonor_schemas::ledger::LedgerEntry::DonationAccepted {
            rows,
            consent_record_id,
            ..
        } => {
            assert_eq!(rows as usize, periods.len() - 1, "the unticked row stayed");
            hex::encode(consent_record_id)
        }
        other => panic!("entry {index}: {other:?}"),
    };
    let mine = b.get_text("/donations").await;
    assert!(
        mine.contains("Verified: in the current ledger of"),
        "{mine}"
    );
    let r = b.post_form("/withdraw", &[("record", &record)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    let withdrawn_at: u64 = text
        .split_once("recorded at entry ")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("withdrawal entry");
    assert!(matches!(
        entry(withdrawn_at),
        datadonor_schemas::ledger::LedgerEntry::ConsentWithdrawn { .. }
    ));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_serves_the_app_on_loopback_and_prints_the_address() {
    use std::io::{BufRead, BufReader};
    let server = TestIntake::start().await;
    let home = tempfile::tempdir().expect("keystore dir");
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).expect("write the CA");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_datadonor"))
        .arg("--keystore")
        .arg(home.path().join("ks"))
        .args(["app", "--no-browser", "--intake", &server.url, "--ca"])
        .arg(&ca)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start datadonor app");
    let stdout = child.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.trim()
                    .strip_prefix("http://")
                    .map(|rest| format!("http://{rest}"))
            })
    })
    .await
    .expect("read stdout");
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("http");
    let result = async {
        let url = url.ok_or("no address printed")?;
        if !url.starts_with("http://127.0.0.1:") || !url.contains("/?token=") {
            return Err(format!("unexpected address {url}"));
        }
        let base = url.split("/?").next().unwrap_or_default().to_string();
        let r = http
            .get(format!("{base}/"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != StatusCode::FORBIDDEN {
            return Err(format!("without the token: {}", r.status()));
        }
        let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
        if r.status() != StatusCode::SEE_OTHER {
            return Err(format!("with the token: {}", r.status()));
        }
        let cookie = session_cookie(r.headers());
        let page = http
            .get(format!("{base}/"))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if !page.contains("t2d-dk") {
            return Err("the study list does not name the study".to_string());
        }
        Ok(())
    }
    .await;
    // Stop the app this test started.
    let _ = child.kill();
    let _ = child.wait();
    result.expect("datadonor app");
}
