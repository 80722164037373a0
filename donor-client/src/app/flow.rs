//! The app's routes: each step of the donor's flow, "my donations", withdrawal, the language
//! switch and the embedded assets.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use datadonor_schemas::pseudonym::{Cpr, PseudonymError};
use datadonor_schemas::receipt::ReceiptKind;
use datadonor_schemas::study::StudyId;
use tokio::io::AsyncWriteExt;

use super::i18n::{fill, Lang};
use super::pages::{self, Ctx};
use super::{Shared, LANG_COOKIE};
use crate::client::{ClientError, PublishedStudy};
use crate::donation::{ConsentChoice, DonationError};
use crate::keystore::{intake_dir_name, StoredReceipt};
use crate::minimise::{minimise_paths, MinimiseError, MinimiseOptions, MinimisedRows};
use crate::session::{IntakeSession, SessionError};

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// An uploaded export.
pub(crate) struct Upload {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) bytes: u64,
}

/// A donation the intake acknowledged, as the receipt page tells it.
pub(crate) struct Done {
    pub(crate) study_title: String,
    pub(crate) rows: usize,
    pub(crate) ledger_index: u64,
    pub(crate) tree_size: u64,
    pub(crate) cosigned_by: Vec<String>,
    pub(crate) pseudonym: String,
    pub(crate) pseudonymisers: usize,
}

/// The donor's progress.
#[derive(Default)]
pub(crate) struct Flow {
    pub(crate) study: Option<PublishedStudy>,
    pub(crate) upload: Option<Upload>,
    uploads: u64,
    pub(crate) cpr: Option<Cpr>,
    pub(crate) postcode: Option<String>,
    pub(crate) rows: Option<MinimisedRows>,
    pub(crate) keep: Vec<bool>,
    pub(crate) done: Option<Done>,
}

impl Flow {
    /// Forget the export and everything derived from it (the file is deleted).
    fn clear_export(&mut self) {
        if let Some(u) = self.upload.take() {
            let _ = std::fs::remove_file(&u.path);
        }
        self.clear_identity();
    }

    /// Forget the CPR number, the postcode and the rows.
    fn clear_identity(&mut self) {
        self.cpr = None;
        self.postcode = None;
        self.rows = None;
        self.keep.clear();
    }
}

type S = State<Arc<Shared>>;
type Fields = Form<Vec<(String, String)>>;

pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(study_page).post(choose_study))
        .route(
            "/export",
            get(export_page)
                .post(upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/identity", get(identity_page).post(identity))
        .route("/preview", get(preview_page).post(select_rows))
        .route("/consent", get(consent_page).post(consent))
        .route("/receipt", get(receipt_page))
        .route("/donations", get(donations_page))
        .route("/withdraw", get(withdraw_page).post(withdraw))
        .route("/lang", get(switch_lang))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .with_state(shared)
}

fn lang_of(headers: &HeaderMap) -> Lang {
    super::cookie(headers, LANG_COOKIE)
        .and_then(Lang::from_tag)
        .unwrap_or_else(|| {
            Lang::from_accept_language(
                headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok()),
            )
        })
}

fn ctx(headers: &HeaderMap, path: &'static str) -> Ctx {
    Ctx {
        lang: lang_of(headers),
        path,
    }
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Flow> {
    s.flow.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line of an error chain for the page.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

// --- step 1: the study --------------------------------------------------

async fn studies(s: &Shared) -> Result<Vec<PublishedStudy>, ClientError> {
    let intake = &s.config.intake;
    let mut out = Vec::new();
    for id in intake.studies().await? {
        let Ok(id) = StudyId::new(&id) else { continue };
        out.push(intake.study(&id).await?);
    }
    Ok(out)
}

async fn study_page(State(s): S, headers: HeaderMap) -> Response {
    let c = ctx(&headers, "/");
    study_response(&s, &c, StatusCode::OK, None).await
}

async fn study_response(
    s: &Shared,
    c: &Ctx,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let t = c.lang.strings();
    let chosen = lock(s).study.as_ref().map(|p| p.definition.id.to_string());
    match studies(s).await {
        Ok(list) => html(
            status,
            pages::study(c, &list, chosen.as_deref(), error.as_deref()),
        ),
        Err(e) => html(
            StatusCode::BAD_GATEWAY,
            pages::study(
                c,
                &[],
                None,
                Some(&fill(t.study_unreachable, &[&one_line(&e)])),
            ),
        ),
    }
}

async fn choose_study(State(s): S, headers: HeaderMap, Form(fields): Fields) -> Response {
    let c = ctx(&headers, "/");
    let t = c.lang.strings();
    let Some(id) = field(&fields, "study").and_then(|v| StudyId::new(v).ok()) else {
        return study_response(
            &s,
            &c,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(t.study_choose.into()),
        )
        .await;
    };
    match s.config.intake.study(&id).await {
        Ok(study) => {
            let mut f = lock(&s);
            let same = f.study.as_ref().is_some_and(|p| p.sha256 == study.sha256);
            if !same {
                f.clear_identity();
                f.study = Some(study);
            }
            see_other("/export")
        }
        Err(ClientError::Problem { status: 404, .. }) => {
            study_response(
                &s,
                &c,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(t.study_unknown.into()),
            )
            .await
        }
        Err(e) => {
            study_response(
                &s,
                &c,
                StatusCode::BAD_GATEWAY,
                Some(fill(t.study_unreachable, &[&one_line(&e)])),
            )
            .await
        }
    }
}

// --- step 2: the export -------------------------------------------------

fn max_mb(s: &Shared) -> String {
    let mb = s.config.max_upload_bytes as f64 / (1024.0 * 1024.0);
    if mb >= 10.0 {
        format!("{mb:.0}")
    } else {
        format!("{mb:.1}")
    }
}

fn export_response(s: &Shared, c: &Ctx, status: StatusCode, error: Option<String>) -> Response {
    let f = lock(s);
    if f.study.is_none() {
        return see_other("/");
    }
    let current = f.upload.as_ref().map(|u| (u.name.clone(), u.bytes));
    drop(f);
    html(
        status,
        pages::export(c, &max_mb(s), current.as_ref(), error.as_deref()),
    )
}

async fn export_page(State(s): S, headers: HeaderMap) -> Response {
    export_response(&s, &ctx(&headers, "/export"), StatusCode::OK, None)
}

/// The uploaded file's name reduced to `[A-Za-z0-9._-]` (the importers read the format from the
/// content, and a Synthea table from its name).
fn safe_name(name: Option<&str>) -> String {
    let base = name.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let s: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(100)
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "export".to_string()
    } else {
        s
    }
}

enum UploadError {
    Missing,
    TooLarge,
    Failed(String),
}

async fn receive(s: &Shared, mut mp: Multipart) -> Result<Upload, UploadError> {
    let max = s.config.max_upload_bytes;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(UploadError::Missing),
            Err(e) => return Err(map_multipart(e)),
        };
        if field.name() != Some("export") {
            continue;
        }
        let name = safe_name(field.file_name());
        let seq = {
            let mut f = lock(s);
            f.uploads += 1;
            f.uploads
        };
        let path = s.uploads.path().join(format!("{seq}-{name}"));
        let result = write_field(field, &path, max).await;
        match result {
            Ok(0) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(UploadError::Missing);
            }
            Ok(bytes) => return Ok(Upload { path, name, bytes }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        }
    }
}

fn map_multipart(e: axum::extract::multipart::MultipartError) -> UploadError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        UploadError::TooLarge
    } else {
        UploadError::Failed(e.body_text())
    }
}

async fn write_field(
    mut field: axum::extract::multipart::Field<'_>,
    path: &std::path::Path,
    max: u64,
) -> Result<u64, UploadError> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts
        .open(path)
        .await
        .map_err(|e| UploadError::Failed(e.to_string()))?;
    let mut total = 0u64;
    let mut too_large = false;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if total > max {
                    // Read the rest without keeping it, so the browser gets the answer
                    // instead of a connection reset in the middle of its upload.
                    too_large = true;
                    continue;
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| UploadError::Failed(e.to_string()))?;
            }
            Ok(None) => break,
            Err(e) => return Err(map_multipart(e)),
        }
    }
    if too_large {
        return Err(UploadError::TooLarge);
    }
    file.flush()
        .await
        .map_err(|e| UploadError::Failed(e.to_string()))?;
    Ok(total)
}

async fn upload(State(s): S, headers: HeaderMap, mp: Multipart) -> Response {
    let c = ctx(&headers, "/export");
    let t = c.lang.strings();
    if lock(&s).study.is_none() {
        return see_other("/");
    }
    let _busy = s.busy.lock().await;
    match receive(&s, mp).await {
        Ok(u) => {
            let mut f = lock(&s);
            f.clear_export();
            f.upload = Some(u);
            drop(f);
            see_other("/identity")
        }
        Err(e) => {
            let (status, msg) = match e {
                UploadError::Missing => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    t.export_missing.to_string(),
                ),
                UploadError::TooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    fill(t.export_too_large, &[&max_mb(&s)]),
                ),
                UploadError::Failed(d) => (StatusCode::BAD_REQUEST, fill(t.export_failed, &[&d])),
            };
            export_response(&s, &c, status, Some(msg))
        }
    }
}

// --- step 3: CPR number and postcode -------------------------------------

async fn identity_page(State(s): S, headers: HeaderMap) -> Response {
    let c = ctx(&headers, "/identity");
    let f = lock(&s);
    if f.upload.is_none() {
        return see_other(if f.study.is_none() { "/" } else { "/export" });
    }
    let postcode = f.postcode.clone().unwrap_or_default();
    drop(f);
    html(
        StatusCode::OK,
        pages::identity(&c, &postcode, &pages::IdentityErrors::default()),
    )
}

async fn identity(State(s): S, headers: HeaderMap, Form(fields): Fields) -> Response {
    let c = ctx(&headers, "/identity");
    let t = c.lang.strings();
    let (study, path) = {
        let f = lock(&s);
        match (&f.study, &f.upload) {
            (Some(st), Some(u)) => (st.definition.clone(), u.path.clone()),
            (None, _) => return see_other("/"),
            (_, None) => return see_other("/export"),
        }
    };
    let postcode = field(&fields, "postcode").unwrap_or("").trim().to_string();
    let mut errors = pages::IdentityErrors::default();
    let cpr = match Cpr::parse(field(&fields, "cpr").unwrap_or("")) {
        Ok(c) => Some(c),
        Err(PseudonymError::CprDate) => {
            errors.cpr = Some(t.cpr_date.to_string());
            None
        }
        Err(_) => {
            errors.cpr = Some(t.cpr_format.to_string());
            None
        }
    };
    let postcode_ok = postcode.len() == 4 && postcode.bytes().all(|b| b.is_ascii_digit());
    if !postcode.is_empty() && !postcode_ok {
        errors.postcode = Some(t.postcode_format.to_string());
    }
    let Some(cpr) = cpr.filter(|_| errors.postcode.is_none()) else {
        return html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::identity(&c, &postcode, &errors),
        );
    };
    let mut options = MinimiseOptions::default().with_cpr(&cpr);
    if !postcode.is_empty() {
        options = options.with_postcode(postcode.clone());
    }
    let result = tokio::task::spawn_blocking(move || {
        minimise_paths(&[path.as_path()], &study, options, &mut |_| {})
    })
    .await;
    let rows = match result {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            errors.form = Some(match e {
                MinimiseError::CprMismatch { .. } => t.cpr_mismatch.to_string(),
                MinimiseError::SeveralPatients { .. } => t.several_patients.to_string(),
                other => fill(t.import_failed, &[&one_line(&other)]),
            });
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::identity(&c, &postcode, &errors),
            );
        }
        Err(e) => {
            errors.form = Some(fill(t.import_failed, &[&one_line(&e)]));
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::identity(&c, &postcode, &errors),
            );
        }
    };
    let mut f = lock(&s);
    f.keep = vec![true; rows.rows.len()];
    f.rows = Some(rows);
    f.cpr = Some(cpr);
    f.postcode = (!postcode.is_empty()).then_some(postcode);
    see_other("/preview")
}

// --- step 4: the preview ---------------------------------------------------

fn preview_response(s: &Shared, c: &Ctx, status: StatusCode, error: Option<&str>) -> Response {
    let f = lock(s);
    let Some(rows) = &f.rows else {
        return see_other("/identity");
    };
    let preview = crate::preview::Preview::new(rows, None);
    html(status, pages::preview(c, &preview, &f.keep, error))
}

async fn preview_page(State(s): S, headers: HeaderMap) -> Response {
    preview_response(&s, &ctx(&headers, "/preview"), StatusCode::OK, None)
}

async fn select_rows(State(s): S, headers: HeaderMap, Form(fields): Fields) -> Response {
    let c = ctx(&headers, "/preview");
    let kept: HashSet<usize> = fields
        .iter()
        .filter(|(k, _)| k == "keep")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    {
        let mut f = lock(&s);
        let Some(rows) = &f.rows else {
            return see_other("/identity");
        };
        let n = rows.rows.len();
        f.keep = (0..n).map(|i| kept.contains(&i)).collect();
        if f.keep.iter().any(|k| *k) {
            return see_other("/consent");
        }
    }
    preview_response(
        &s,
        &c,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some(c.lang.strings().preview_keep_one),
    )
}

// --- step 5: consent and donation ---------------------------------------

/// The rows the donor kept.
fn kept_rows(f: &Flow) -> Option<MinimisedRows> {
    let rows = f.rows.as_ref()?;
    let mut kept = rows.clone();
    kept.rows = rows
        .rows
        .iter()
        .zip(&f.keep)
        .filter(|(_, k)| **k)
        .map(|(r, _)| r.clone())
        .collect();
    (!kept.rows.is_empty()).then_some(kept)
}

async fn consent_response(
    s: &Shared,
    c: &Ctx,
    status: StatusCode,
    form: &pages::ConsentForm,
) -> Response {
    let (study, kept) = {
        let f = lock(s);
        match (&f.study, kept_rows(&f)) {
            (Some(st), Some(k)) => (st.clone(), k.rows.len()),
            _ => return see_other("/preview"),
        }
    };
    let texts = study.definition.texts_for(&[c.lang.tag()]);
    // The notice in the language shown, checked against the hash the study signs.
    let notice = s.config.intake.notice(&texts.notice_sha256).await;
    let notice = notice.as_ref().map(String::as_str).map_err(|e| one_line(e));
    html(
        status,
        pages::consent(c, &study, &texts, notice, kept, form),
    )
}

async fn consent_page(State(s): S, headers: HeaderMap) -> Response {
    let c = ctx(&headers, "/consent");
    let max = lock(&s)
        .study
        .as_ref()
        .map_or(365, |p| p.definition.max_consent_days);
    let form = pages::ConsentForm {
        purposes: Vec::new(),
        expires_days: max.min(365).to_string(),
        error: None,
    };
    consent_response(&s, &c, StatusCode::OK, &form).await
}

/// A session with the intake: its keys, the ledger key checked against (or pinned in) the key
/// store, and the donor's witness policy.
async fn session(s: &Shared) -> Result<IntakeSession, SessionError> {
    let intake = s.config.intake.clone();
    let ks = &s.config.keystore;
    let pinned = ks
        .pinned_ledger_key(intake.base_url())
        .map_err(|e| SessionError::StoredReceipt(e.to_string()))?;
    let session = IntakeSession::connect(intake.clone(), pinned.as_ref())
        .await?
        .with_witnesses(s.config.witnesses.clone());
    if pinned.is_none() {
        ks.pin_ledger_key(intake.base_url(), &session.ledger().info)
            .map_err(|e| SessionError::StoredReceipt(e.to_string()))?;
    }
    Ok(session)
}

/// [`session`] for donating to `study`: the study's bundle checked against (or pinned in) the
/// key store, trust on first use of the steward key as the CLI does, and the bundle's witnesses
/// required when the donor named none. An intake that publishes no bundle is used as before.
async fn session_for(s: &Shared, study: &PublishedStudy) -> Result<IntakeSession, SessionError> {
    use datadonor_schemas::time::Clock as _;
    let session = session(s).await?;
    let bundle = match session.intake().study_bundle(study, session.ledger()).await {
        Ok(b) => b,
        Err(ClientError::Problem { status: 404, .. }) => return Ok(session),
        Err(e) => return Err(e.into()),
    };
    crate::pins::pin_study(
        &s.config.keystore,
        s.config.intake.base_url(),
        study,
        &bundle,
        datadonor_schemas::time::SystemClock.now(),
    )?;
    if s.config.witnesses.is_none() {
        if let Some(policy) = crate::pins::bundle_witness_policy(&bundle)? {
            return Ok(session.with_witnesses(Some(policy)));
        }
    }
    Ok(session)
}

async fn donor_key(s: &Shared) -> Result<datadonor_schemas::signing::SigningKey, String> {
    let ks = s.config.keystore.clone();
    let pass = s.config.passphrase.clone();
    tokio::task::spawn_blocking(move || ks.donor_key(pass.as_ref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn consent(State(s): S, headers: HeaderMap, Form(fields): Fields) -> Response {
    let c = ctx(&headers, "/consent");
    let t = c.lang.strings();
    let _busy = s.busy.lock().await;
    let (study, kept, cpr) = {
        let f = lock(&s);
        match (&f.study, kept_rows(&f), &f.cpr) {
            (Some(st), Some(k), Some(cpr)) => (st.clone(), k, cpr.clone()),
            _ if f.done.is_some() => return see_other("/receipt"),
            _ => return see_other("/preview"),
        }
    };
    let purposes: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "purpose")
        .map(|(_, v)| v.clone())
        .collect();
    let expires_raw = field(&fields, "expires_days")
        .unwrap_or("")
        .trim()
        .to_string();
    let max = study.definition.max_consent_days;
    let mut form = pages::ConsentForm {
        purposes: purposes.clone(),
        expires_days: expires_raw.clone(),
        error: None,
    };
    let Some(days) = expires_raw
        .parse::<u32>()
        .ok()
        .filter(|d| (1..=max).contains(d))
    else {
        form.error = Some(fill(t.consent_bad_expiry, &[&max.to_string()]));
        return consent_response(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, &form).await;
    };
    // The language of the notice and purposes the page showed: the manifest signs that
    // notice's hash.
    let language = field(&fields, "notice_language")
        .filter(|l| study.definition.texts(l).is_some())
        .map(str::to_string);
    let choice = ConsentChoice {
        purposes,
        expires_in_days: days,
        language,
    };
    match crate::donation::check_choice(&study.definition, &choice) {
        Ok(()) => {}
        Err(DonationError::BadExpiry { .. }) => {
            form.error = Some(fill(t.consent_bad_expiry, &[&max.to_string()]));
            return consent_response(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, &form).await;
        }
        Err(DonationError::BadPurposes) => {
            form.error = Some(t.consent_no_purpose.to_string());
            return consent_response(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, &form).await;
        }
        Err(e) => {
            form.error = Some(one_line(&e));
            return consent_response(&s, &c, StatusCode::UNPROCESSABLE_ENTITY, &form).await;
        }
    }
    let key = match donor_key(&s).await {
        Ok(k) => k,
        Err(e) => {
            form.error = Some(fill(t.donate_failed, &[&e]));
            return consent_response(&s, &c, StatusCode::INTERNAL_SERVER_ERROR, &form).await;
        }
    };
    let ks = &s.config.keystore;
    let outcome = match session_for(&s, &study).await {
        Ok(session) => session.donate(&study, &kept, &cpr, &key, &choice).await,
        Err(e) => Err(e),
    };
    drop(cpr);
    match outcome {
        Ok(o) => {
            if let Err(e) = ks.store_receipt(&o.stored) {
                form.error = Some(fill(t.donate_failed, &[&one_line(&e)]));
                return consent_response(&s, &c, StatusCode::INTERNAL_SERVER_ERROR, &form).await;
            }
            if let Some(w) = &o.witnessed {
                let _ = ks.store_checkpoint(s.config.intake.base_url(), &w.note);
            }
            let done = Done {
                study_title: study
                    .definition
                    .texts_for(&[c.lang.tag()])
                    .title
                    .to_string(),
                rows: kept.rows.len(),
                ledger_index: o.receipt.receipt.ledger_index,
                tree_size: o
                    .witnessed
                    .as_ref()
                    .map_or(o.receipt.tree_size, |w| w.checkpoint.size),
                cosigned_by: o.witnessed.map(|w| w.cosigned_by).unwrap_or_default(),
                pseudonym: o.pseudonym.to_hex(),
                pseudonymisers: o.pseudonymisers_used.len(),
            };
            let mut f = lock(&s);
            f.clear_export();
            f.done = Some(done);
            see_other("/receipt")
        }
        Err(SessionError::NotWitnessed { stored, reason }) => {
            let _ = ks.store_receipt(&stored);
            lock(&s).clear_export();
            let msg = fill(t.donate_not_witnessed, &[&one_line(&reason)]);
            html(
                StatusCode::BAD_GATEWAY,
                pages::message(&c, t.donations_title, &msg),
            )
        }
        Err(e) => {
            form.error = Some(fill(t.donate_failed, &[&one_line(&e)]));
            consent_response(&s, &c, StatusCode::BAD_GATEWAY, &form).await
        }
    }
}

// --- step 6: the receipt -------------------------------------------------

async fn receipt_page(State(s): S, headers: HeaderMap) -> Response {
    let c = ctx(&headers, "/receipt");
    let f = lock(&s);
    match &f.done {
        Some(d) => html(StatusCode::OK, pages::receipt(&c, d)),
        None => see_other("/"),
    }
}

// --- my donations and withdrawal ------------------------------------------

/// A stored receipt and what checking it again said.
pub(crate) struct Checked {
    pub(crate) stored: StoredReceipt,
    pub(crate) check: Check,
    pub(crate) withdrawn: bool,
}

pub(crate) enum Check {
    Ok(u64),
    Failed(String),
    OtherIntake,
}

async fn donations_page(State(s): S, headers: HeaderMap) -> Response {
    let c = ctx(&headers, "/donations");
    let ks = &s.config.keystore;
    let list = match ks.receipts() {
        Ok(l) => l,
        Err(e) => {
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::message(&c, c.lang.strings().donations_title, &one_line(&e)),
            )
        }
    };
    let withdrawn: HashSet<(String, String)> = list
        .iter()
        .filter(|(_, r)| r.kind == ReceiptKind::Withdrawal)
        .map(|(_, r)| (intake_dir_name(&r.intake), r.consent_record_id.clone()))
        .collect();
    let ours = intake_dir_name(s.config.intake.base_url());
    let mut session_result: Option<Result<IntakeSession, String>> = None;
    let mut checked = Vec::new();
    for (_, stored) in list {
        let here = intake_dir_name(&stored.intake);
        let check = if here != ours {
            Check::OtherIntake
        } else {
            if session_result.is_none() {
                session_result = Some(session(&s).await.map_err(|e| one_line(&e)));
            }
            match session_result.as_ref() {
                Some(Ok(session)) => {
                    let last = ks.last_checkpoint(&stored.intake).ok().flatten();
                    match session.verify(&stored, last.as_deref()).await {
                        Ok(v) => match v.current {
                            Some((size, note)) => {
                                let _ = ks.store_checkpoint(&stored.intake, &note);
                                Check::Ok(size)
                            }
                            None => Check::Ok(v.receipt.tree_size),
                        },
                        Err(e) => Check::Failed(one_line(&e)),
                    }
                }
                Some(Err(e)) => Check::Failed(e.clone()),
                None => Check::Failed(String::new()),
            }
        };
        let is_withdrawn = stored.kind == ReceiptKind::Donation
            && withdrawn.contains(&(here, stored.consent_record_id.clone()));
        checked.push(Checked {
            stored,
            check,
            withdrawn: is_withdrawn,
        });
    }
    checked.reverse();
    html(StatusCode::OK, pages::donations(&c, &checked))
}

/// The stored donation receipt at this app's intake with consent record `record` (hex).
fn find_donation(s: &Shared, record: &str) -> Option<StoredReceipt> {
    if record.len() != 32 || !record.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ours = intake_dir_name(s.config.intake.base_url());
    s.config
        .keystore
        .receipts()
        .ok()?
        .into_iter()
        .map(|(_, r)| r)
        .find(|r| {
            r.kind == ReceiptKind::Donation
                && r.consent_record_id.eq_ignore_ascii_case(record)
                && intake_dir_name(&r.intake) == ours
        })
}

#[derive(serde::Deserialize)]
struct RecordQuery {
    record: Option<String>,
}

async fn withdraw_page(State(s): S, headers: HeaderMap, Query(q): Query<RecordQuery>) -> Response {
    let c = ctx(&headers, "/donations");
    let t = c.lang.strings();
    match q.record.as_deref().and_then(|r| find_donation(&s, r)) {
        Some(d) => html(StatusCode::OK, pages::withdraw_confirm(&c, &d)),
        None => html(
            StatusCode::NOT_FOUND,
            pages::message(&c, t.withdraw_title, t.withdraw_unknown),
        ),
    }
}

async fn withdraw(State(s): S, headers: HeaderMap, Form(fields): Fields) -> Response {
    let c = ctx(&headers, "/donations");
    let t = c.lang.strings();
    let Some(donation) = field(&fields, "record").and_then(|r| find_donation(&s, r)) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::message(&c, t.withdraw_title, t.withdraw_unknown),
        );
    };
    let _busy = s.busy.lock().await;
    let key = match donor_key(&s).await {
        Ok(k) => k,
        Err(e) => {
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::message(&c, t.withdraw_title, &fill(t.withdraw_failed, &[&e])),
            )
        }
    };
    let ks = &s.config.keystore;
    let result = match session(&s).await {
        Ok(session) => session.withdraw(&donation, &key).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((receipt, stored)) => {
            if let Err(e) = ks.store_receipt(&stored) {
                return html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    pages::message(
                        &c,
                        t.withdraw_title,
                        &fill(t.withdraw_failed, &[&one_line(&e)]),
                    ),
                );
            }
            let text = fill(
                t.withdrawn_text,
                &[
                    &donation.study_id,
                    &receipt.receipt.ledger_index.to_string(),
                ],
            );
            html(StatusCode::OK, pages::message(&c, t.withdrawn_title, &text))
        }
        Err(SessionError::NotWitnessed { stored, reason }) => {
            let _ = ks.store_receipt(&stored);
            html(
                StatusCode::BAD_GATEWAY,
                pages::message(
                    &c,
                    t.withdraw_title,
                    &fill(t.withdraw_failed, &[&one_line(&reason)]),
                ),
            )
        }
        Err(e) => html(
            StatusCode::BAD_GATEWAY,
            pages::message(
                &c,
                t.withdraw_title,
                &fill(t.withdraw_failed, &[&one_line(&e)]),
            ),
        ),
    }
}

// --- language and assets --------------------------------------------------

#[derive(serde::Deserialize)]
struct LangQuery {
    to: Option<String>,
    next: Option<String>,
}

/// A local path to return to: `/` followed by letters only (no `//`, no scheme, no query).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && n.len() <= 32
                && n[1..].bytes().all(|b| b.is_ascii_lowercase()) =>
        {
            n
        }
        _ => "/",
    }
}

async fn switch_lang(Query(q): Query<LangQuery>) -> Response {
    let Some(lang) = q.to.as_deref().and_then(Lang::from_tag) else {
        return (StatusCode::BAD_REQUEST, "unknown language\n").into_response();
    };
    let mut r = see_other(safe_next(q.next.as_deref()));
    let cookie = format!(
        "{LANG_COOKIE}={}; SameSite=Strict; Path=/; Max-Age=31536000",
        lang.tag()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploaded_names_are_reduced_to_safe_characters() {
        assert_eq!(safe_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(
            safe_name(Some("C:\\x\\observations.csv")),
            "observations.csv"
        );
        assert_eq!(safe_name(Some("..hidden")), "hidden");
        assert_eq!(safe_name(Some("a b<c>.json")), "abc.json");
        assert_eq!(safe_name(None), "export");
        assert_eq!(safe_name(Some("///")), "export");
    }

    #[test]
    fn language_switch_returns_only_to_local_paths() {
        assert_eq!(safe_next(Some("/consent")), "/consent");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/a?b")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
