//! The pages, server-rendered with maud (every value escaped). Semantic HTML: one `h1` per
//! page, labelled controls, errors announced with `role="alert"` and tied to their fields.

use maud::{html, Markup, DOCTYPE};

use super::flow::{Check, Checked, Done};
use super::i18n::{drop_reason, fill, Lang};
use crate::client::PublishedStudy;
use crate::keystore::StoredReceipt;
use crate::minimise::Cell;
use crate::preview::Preview;
use datadonor_schemas::receipt::ReceiptKind;
use datadonor_schemas::study::LocalizedTexts;

/// What every page needs: the language and the page's own path (for the language switch).
pub(crate) struct Ctx {
    pub(crate) lang: Lang,
    pub(crate) path: &'static str,
}

/// Errors of the CPR and postcode form.
#[derive(Default)]
pub(crate) struct IdentityErrors {
    pub(crate) cpr: Option<String>,
    pub(crate) postcode: Option<String>,
    pub(crate) form: Option<String>,
}

/// The consent form as submitted (to show it again with an error).
pub(crate) struct ConsentForm {
    pub(crate) purposes: Vec<String>,
    pub(crate) expires_days: String,
    pub(crate) error: Option<String>,
}

fn layout(c: &Ctx, title: &str, step: Option<usize>, body: Markup) -> Markup {
    let t = c.lang.strings();
    let other = c.lang.other();
    let on_donations = c.path == "/donations";
    html! {
        (DOCTYPE)
        html lang=(c.lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " \u{2013} Datadonor" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a class="skip" href="#main" { (t.skip_to_content) }
                header class="top" {
                    p class="brand" { "Datadonor" }
                    nav aria-label=(t.nav_label) {
                        ul {
                            li { a href="/" aria-current=[(!on_donations).then_some("page")] { (t.nav_donate) } }
                            li { a href="/donations" aria-current=[on_donations.then_some("page")] { (t.nav_donations) } }
                        }
                    }
                    a class="lang" lang=(other.tag()) hreflang=(other.tag())
                        href={ "/lang?to=" (other.tag()) "&next=" (c.path) } { (t.switch_to) }
                }
                main id="main" {
                    @if let Some(step) = step {
                        (steps(c, step))
                    }
                    h1 { (title) }
                    (body)
                }
                footer { p { (t.footer) } }
            }
        }
    }
}

fn steps(c: &Ctx, current: usize) -> Markup {
    let t = c.lang.strings();
    let n = t.step_names.len();
    html! {
        nav class="steps" aria-label=(t.steps_label) {
            p class="visually-hidden" { (fill(t.step_of, &[&(current + 1).to_string(), &n.to_string()])) }
            ol {
                @for (i, name) in t.step_names.iter().enumerate() {
                    li class=[ (i < current).then_some("done") ] aria-current=[(i == current).then_some("step")] { (name) }
                }
            }
        }
    }
}

fn alert(c: &Ctx, message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            div class="error" role="alert" id="form-error" {
                p { strong { (c.lang.strings().error_heading) ": " } (m) }
            }
        }
    }
}

/// A page with a title and one paragraph.
pub(crate) fn message(c: &Ctx, title: &str, text: &str) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        title,
        None,
        html! {
            p { (text) }
            p { a href="/donations" { (t.nav_donations) } }
        },
    )
}

pub(crate) fn study(
    c: &Ctx,
    studies: &[PublishedStudy],
    chosen: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        t.study_title,
        Some(0),
        html! {
            (alert(c, error))
            p { (t.study_intro) }
            @if studies.is_empty() {
                @if error.is_none() { p { (t.study_none) } }
            } @else {
                form method="post" action="/" {
                    fieldset {
                        legend { (t.study_legend) }
                        @for (i, s) in studies.iter().enumerate() {
                            @let id = s.definition.id.to_string();
                            @let checked = chosen == Some(id.as_str()) || (chosen.is_none() && i == 0);
                            div class="choice" {
                                input type="radio" name="study" id={ "study-" (i) } value=(id) checked[checked] required;
                                label for={ "study-" (i) } {
                                    @let texts = s.definition.texts_for(&[c.lang.tag()]);
                                    strong lang=(texts.language) { (texts.title) }
                                    span class="hint" { (s.definition.controller.name) " \u{b7} " (id) " v" (s.definition.version) }
                                }
                            }
                        }
                    }
                    button type="submit" { (t.continue_) }
                }
            }
        },
    )
}

pub(crate) fn export(
    c: &Ctx,
    max_mb: &str,
    current: Option<&(String, u64)>,
    error: Option<&str>,
) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        t.export_title,
        Some(1),
        html! {
            (alert(c, error))
            p { (t.export_intro) }
            @if let Some((name, bytes)) = current {
                p class="note" { (fill(t.export_current, &[name, &bytes.to_string()])) }
            }
            form id="upload" method="post" action="/export" enctype="multipart/form-data" {
                div class="field" {
                    label for="export" { (t.export_label) }
                    p class="hint" id="export-hint" { (fill(t.export_formats, &[max_mb])) " " (t.export_hint) }
                    input type="file" id="export" name="export" required
                        aria-describedby="export-hint" aria-invalid=[error.map(|_| "true")];
                }
                div class="progress" id="progress" hidden {
                    label for="progress-bar" { (t.export_progress) }
                    progress id="progress-bar" max="100" value="0" {}
                }
                button type="submit" { (t.export_button) }
            }
        },
    )
}

pub(crate) fn identity(c: &Ctx, postcode: &str, errors: &IdentityErrors) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        t.identity_title,
        Some(2),
        html! {
            (alert(c, errors.form.as_deref().or(errors.cpr.as_deref()).or(errors.postcode.as_deref())))
            p { (t.identity_intro) }
            form method="post" action="/identity" autocomplete="off" {
                div class="field" {
                    label for="cpr" { (t.cpr_label) }
                    p class="hint" id="cpr-hint" { (t.cpr_hint) }
                    @if let Some(e) = &errors.cpr { p class="field-error" id="cpr-error" { (e) } }
                    // The CPR number is never written back into the page.
                    input type="text" id="cpr" name="cpr" inputmode="numeric" required
                        autocomplete="off" spellcheck="false" maxlength="11" pattern="[0-9]{6}-?[0-9]{4}"
                        aria-describedby={ "cpr-hint" @if errors.cpr.is_some() { " cpr-error" } }
                        aria-invalid=[errors.cpr.as_ref().map(|_| "true")];
                }
                div class="field" {
                    label for="postcode" { (t.postcode_label) }
                    p class="hint" id="postcode-hint" { (t.postcode_hint) }
                    @if let Some(e) = &errors.postcode { p class="field-error" id="postcode-error" { (e) } }
                    input type="text" id="postcode" name="postcode" inputmode="numeric" value=(postcode)
                        maxlength="4" pattern="[0-9]{4}" autocomplete="postal-code"
                        aria-describedby={ "postcode-hint" @if errors.postcode.is_some() { " postcode-error" } }
                        aria-invalid=[errors.postcode.as_ref().map(|_| "true")];
                }
                button type="submit" { (t.identity_button) }
            }
        },
    )
}

fn cell_text(c: &Ctx, cell: &Cell) -> Markup {
    let t = c.lang.strings();
    match cell {
        Cell::Number(None) => {
            html! { span class="muted" { "\u{2014}" span class="visually-hidden" { (t.preview_not_observed) } } }
        }
        Cell::Flag(true) => html! { (t.yes) },
        Cell::Flag(false) => html! { (t.no) },
        other => html! { (other.to_string()) },
    }
}

pub(crate) fn preview(c: &Ctx, p: &Preview, keep: &[bool], error: Option<&str>) -> Markup {
    let t = c.lang.strings();
    let dropped_any = !p.report.dropped.is_empty() || !p.report.import_skipped.is_empty();
    layout(
        c,
        t.preview_title,
        Some(3),
        html! {
            (alert(c, error))
            @if p.rows.is_empty() {
                p { (t.preview_none) }
            } @else {
                p { (fill(t.preview_intro, &[&p.rows.len().to_string()])) }
                form method="post" action="/preview" {
                    div class="table-wrap" tabindex="0" role="region" aria-labelledby="rows-caption" {
                        table class="rows" {
                            caption id="rows-caption" { (t.preview_caption) }
                            thead {
                                tr {
                                    th scope="col" { (t.preview_include) }
                                    th scope="col" { "donor" }
                                    @for col in &p.columns { th scope="col" { (col.name) } }
                                }
                            }
                            tbody {
                                @for (i, row) in p.rows.iter().enumerate() {
                                    @let kept = keep.get(i).copied().unwrap_or(true);
                                    tr {
                                        td {
                                            input type="checkbox" name="keep" value=(i) id={ "keep-" (i) } checked[kept]
                                                aria-label=(fill(t.preview_include_row, &[&(i + 1).to_string(), &row.period]));
                                        }
                                        td class="muted" { (t.preview_pseudonym) }
                                        th scope="row" { (row.period) }
                                        @for (_, cell) in &row.cells { td { (cell_text(c, cell)) } }
                                    }
                                }
                            }
                        }
                    }
                    h2 { (t.preview_columns) }
                    dl class="columns" {
                        @for col in &p.columns {
                            dt { (col.name) }
                            dd { (col.description) }
                        }
                    }
                    button type="submit" { (t.preview_button) }
                }
            }
            h2 { (t.preview_dropped) }
            @if dropped_any {
                p { (t.preview_dropped_intro) }
                table class="dropped" {
                    thead { tr { th scope="col" { (t.preview_dropped_what) } th scope="col" { (t.preview_dropped_count) } } }
                    tbody {
                        @for (reason, n) in &p.report.dropped {
                            tr { td { (drop_reason(c.lang, *reason)) } td class="num" { (n) } }
                        }
                        @for (reason, n) in &p.report.import_skipped {
                            tr { td { (fill(t.preview_import_skipped, &[reason])) } td class="num" { (n) } }
                        }
                    }
                }
            } @else {
                p { (t.preview_dropped_nothing) }
            }
        },
    )
}

pub(crate) fn consent(
    c: &Ctx,
    s: &PublishedStudy,
    texts: &LocalizedTexts<'_>,
    notice: Result<&str, String>,
    rows: usize,
    form: &ConsentForm,
) -> Markup {
    let t = c.lang.strings();
    let d = &s.definition;
    let max = d.max_consent_days.to_string();
    layout(
        c,
        t.consent_title,
        Some(4),
        html! {
            (alert(c, form.error.as_deref()))
            p { (t.consent_intro) }
            dl class="facts" {
                dt { (t.consent_study) } dd lang=(texts.language) { (texts.title) " (" (d.id) " v" (d.version) ")" }
                dt { (t.consent_controller) } dd { (d.controller.name) }
                dt { (t.consent_contact) } dd { (d.controller.contact) }
                dt { (t.consent_retention) } dd { (fill(t.consent_retention_days, &[&d.retention_days.to_string()])) }
                dt { (t.consent_steward) } dd { code class="hash" { (s.steward.to_base64()) } }
            }
            h2 { (t.consent_notice_title) }
            @match notice {
                Ok(text) => div class="notice" lang=(texts.language) tabindex="0" role="region" aria-label=(t.consent_notice_title) {
                    @for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
                        @if let Some(heading) = para.strip_prefix("# ") {
                            h3 { (heading) }
                        } @else {
                            p { (para) }
                        }
                    }
                },
                Err(e) => p class="note" { (fill(t.consent_notice_missing, &[&e])) },
            }
            p class="hint" { (t.consent_notice_text) " " code class="hash" { (hex::encode(texts.notice_sha256)) } }
            h2 { (t.consent_withdraw_title) }
            p { (t.consent_withdraw_text) }
            form method="post" action="/consent" {
                input type="hidden" name="notice_language" value=(texts.language);
                fieldset {
                    legend { (t.consent_purposes) }
                    p class="hint" { (t.consent_purposes_hint) }
                    @for (i, (code, text)) in texts.purposes.iter().enumerate() {
                        div class="choice" {
                            input type="checkbox" name="purpose" value=(code) id={ "purpose-" (i) }
                                checked[form.purposes.iter().any(|p| p == code)];
                            label for={ "purpose-" (i) } lang=(texts.language) { (text) " " span class="hint" { "(" (code) ")" } }
                        }
                    }
                }
                div class="field" {
                    label for="expires_days" { (t.consent_expiry) }
                    p class="hint" id="expires-hint" { (fill(t.consent_expiry_hint, &[&max])) }
                    input type="number" id="expires_days" name="expires_days" min="1" max=(max)
                        value=(form.expires_days) required aria-describedby="expires-hint";
                }
                button type="submit" class="primary" { (fill(t.consent_button, &[&rows.to_string()])) }
            }
        },
    )
}

pub(crate) fn receipt(c: &Ctx, d: &Done) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        t.receipt_title,
        Some(5),
        html! {
            div class="success" role="status" {
                p { (fill(t.receipt_rows, &[&d.rows.to_string(), &d.study_title])) }
            }
            p id="receipt-entry" data-ledger-index=(d.ledger_index) { (fill(t.receipt_entry, &[&d.ledger_index.to_string()])) }
            p { (fill(t.receipt_verified, &[&d.tree_size.to_string()])) }
            @if !d.cosigned_by.is_empty() {
                p { (fill(t.receipt_witnessed, &[&d.cosigned_by.join(", ")])) }
            }
            @if d.pseudonymisers > 0 {
                p { (fill(t.receipt_pseudonymisers, &[&d.pseudonymisers.to_string()])) }
            }
            dl class="facts" {
                dt { (t.receipt_pseudonym) } dd { code class="hash" { (d.pseudonym) } }
            }
            p { (t.receipt_stored) }
            p { a href="/donations" class="button" { (t.receipt_next) } }
        },
    )
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|ts| ts.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

pub(crate) fn donations(c: &Ctx, list: &[Checked]) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        t.donations_title,
        None,
        html! {
            p { (t.donations_intro) }
            @if list.is_empty() {
                p { (t.donations_none) }
            } @else {
                div class="table-wrap" tabindex="0" role="region" aria-labelledby="donations-caption" {
                    table class="donations" {
                        caption id="donations-caption" { (t.donations_caption) }
                        thead {
                            tr {
                                th scope="col" { (t.col_study) }
                                th scope="col" { (t.col_kind) }
                                th scope="col" { (t.col_when) }
                                th scope="col" { (t.col_entry) }
                                th scope="col" { (t.col_check) }
                                th scope="col" { (t.col_action) }
                            }
                        }
                        tbody {
                            @for r in list {
                                tr data-record=(r.stored.consent_record_id) {
                                    th scope="row" { (r.stored.study_id) }
                                    td { (match r.stored.kind { ReceiptKind::Donation => t.kind_donation, ReceiptKind::Withdrawal => t.kind_withdrawal }) }
                                    td { (when(r.stored.stored_at)) }
                                    td class="num" { (r.stored.ledger_index) }
                                    td {
                                        @match &r.check {
                                            Check::Ok(size) => span class="ok" { "\u{2713} " (fill(t.check_ok, &[&size.to_string()])) },
                                            Check::Failed(e) => span class="bad" { "\u{2717} " (fill(t.check_failed, &[e])) },
                                            Check::OtherIntake => span class="muted" { (t.check_other_intake) },
                                        }
                                    }
                                    td {
                                        @if r.stored.kind == ReceiptKind::Donation {
                                            @if r.withdrawn {
                                                (t.withdrawn)
                                            } @else if !matches!(r.check, Check::OtherIntake) {
                                                a class="button secondary" href={ "/withdraw?record=" (r.stored.consent_record_id) } { (t.withdraw_button) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(crate) fn withdraw_confirm(c: &Ctx, d: &StoredReceipt) -> Markup {
    let t = c.lang.strings();
    layout(
        c,
        t.withdraw_title,
        None,
        html! {
            p { (fill(t.withdraw_text, &[&d.study_id, &d.ledger_index.to_string()])) }
            form method="post" action="/withdraw" class="actions" {
                input type="hidden" name="record" value=(d.consent_record_id);
                button type="submit" class="danger" { (t.withdraw_confirm) }
                a href="/donations" class="button secondary" { (t.withdraw_cancel) }
            }
        },
    )
}
