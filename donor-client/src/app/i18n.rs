//! Every string the app shows, one table per language. `{}` in a string is replaced, in order,
//! by the arguments of [`fill`].

use crate::minimise::DropReason;

/// A language of the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Danish.
    Da,
    /// English.
    En,
}

impl Lang {
    /// The BCP 47 tag (`da`, `en`).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::Da => "da",
            Lang::En => "en",
        }
    }

    /// From a tag's primary subtag (`da-DK` → Danish).
    pub fn from_tag(tag: &str) -> Option<Self> {
        let primary = tag.trim().split(['-', '_']).next().unwrap_or("");
        if primary.eq_ignore_ascii_case("da") {
            Some(Lang::Da)
        } else if primary.eq_ignore_ascii_case("en") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The other language (the switch link).
    pub fn other(self) -> Self {
        match self {
            Lang::Da => Lang::En,
            Lang::En => Lang::Da,
        }
    }

    /// The table of this language.
    pub fn strings(self) -> &'static Strings {
        match self {
            Lang::Da => &DA,
            Lang::En => &EN,
        }
    }

    /// The preferred supported language of an `Accept-Language` header (English when it names
    /// neither, or when absent).
    pub fn from_accept_language(header: Option<&str>) -> Self {
        let mut best: Option<(u32, Lang)> = None;
        for part in header.unwrap_or("").split(',') {
            let mut it = part.split(';');
            let tag = it.next().unwrap_or("");
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            // Thousandths, so that comparison needs no float ordering.
            let q = (q.clamp(0.0, 1.0) * 1000.0) as u32;
            if let Some(l) = Lang::from_tag(tag) {
                if q > 0 && best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }
}

/// `template` with each `{}` replaced by the next argument.
pub fn fill(template: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut args = args.iter();
    let mut rest = template;
    while let Some(i) = rest.find("{}") {
        out.push_str(&rest[..i]);
        out.push_str(args.next().copied().unwrap_or(""));
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

/// The strings of one language.
#[allow(missing_docs)]
#[derive(Debug)]
pub struct Strings {
    pub switch_to: &'static str,
    pub skip_to_content: &'static str,
    pub nav_label: &'static str,
    pub nav_donate: &'static str,
    pub nav_donations: &'static str,
    pub footer: &'static str,
    pub steps_label: &'static str,
    pub step_names: [&'static str; 6],
    pub step_of: &'static str,
    pub error_heading: &'static str,

    pub study_title: &'static str,
    pub study_intro: &'static str,
    pub study_legend: &'static str,
    pub study_none: &'static str,
    pub study_unreachable: &'static str,
    pub study_choose: &'static str,
    pub study_unknown: &'static str,
    pub continue_: &'static str,

    pub export_title: &'static str,
    pub export_intro: &'static str,
    pub export_formats: &'static str,
    pub export_label: &'static str,
    pub export_hint: &'static str,
    pub export_button: &'static str,
    pub export_progress: &'static str,
    pub export_missing: &'static str,
    pub export_too_large: &'static str,
    pub export_failed: &'static str,
    pub export_current: &'static str,

    pub identity_title: &'static str,
    pub identity_intro: &'static str,
    pub cpr_label: &'static str,
    pub cpr_hint: &'static str,
    pub cpr_format: &'static str,
    pub cpr_date: &'static str,
    pub cpr_mismatch: &'static str,
    pub postcode_label: &'static str,
    pub postcode_hint: &'static str,
    pub postcode_format: &'static str,
    pub identity_button: &'static str,
    pub import_failed: &'static str,
    pub several_patients: &'static str,

    pub preview_title: &'static str,
    pub preview_intro: &'static str,
    pub preview_none: &'static str,
    pub preview_caption: &'static str,
    pub preview_include: &'static str,
    pub preview_include_row: &'static str,
    pub preview_pseudonym: &'static str,
    pub preview_not_observed: &'static str,
    pub preview_columns: &'static str,
    pub preview_dropped: &'static str,
    pub preview_dropped_intro: &'static str,
    pub preview_dropped_nothing: &'static str,
    pub preview_dropped_what: &'static str,
    pub preview_dropped_count: &'static str,
    pub preview_import_skipped: &'static str,
    pub preview_button: &'static str,
    pub preview_keep_one: &'static str,

    pub consent_title: &'static str,
    pub consent_intro: &'static str,
    pub consent_study: &'static str,
    pub consent_controller: &'static str,
    pub consent_contact: &'static str,
    pub consent_retention: &'static str,
    pub consent_retention_days: &'static str,
    pub consent_steward: &'static str,
    pub consent_purposes: &'static str,
    pub consent_purposes_hint: &'static str,
    pub consent_expiry: &'static str,
    pub consent_expiry_hint: &'static str,
    pub consent_withdraw_title: &'static str,
    pub consent_withdraw_text: &'static str,
    pub consent_notice_title: &'static str,
    pub consent_notice_text: &'static str,
    pub consent_notice_missing: &'static str,
    pub consent_button: &'static str,
    pub consent_no_purpose: &'static str,
    pub consent_bad_expiry: &'static str,
    pub donate_failed: &'static str,
    pub donate_not_witnessed: &'static str,

    pub receipt_title: &'static str,
    pub receipt_rows: &'static str,
    pub receipt_entry: &'static str,
    pub receipt_verified: &'static str,
    pub receipt_witnessed: &'static str,
    pub receipt_pseudonym: &'static str,
    pub receipt_pseudonymisers: &'static str,
    pub receipt_stored: &'static str,
    pub receipt_next: &'static str,

    pub donations_title: &'static str,
    pub donations_intro: &'static str,
    pub donations_none: &'static str,
    pub donations_caption: &'static str,
    pub col_study: &'static str,
    pub col_kind: &'static str,
    pub col_when: &'static str,
    pub col_entry: &'static str,
    pub col_check: &'static str,
    pub col_action: &'static str,
    pub kind_donation: &'static str,
    pub kind_withdrawal: &'static str,
    pub check_ok: &'static str,
    pub check_failed: &'static str,
    pub check_other_intake: &'static str,
    pub withdrawn: &'static str,
    pub withdraw_button: &'static str,

    pub withdraw_title: &'static str,
    pub withdraw_text: &'static str,
    pub withdraw_confirm: &'static str,
    pub withdraw_cancel: &'static str,
    pub withdraw_unknown: &'static str,
    pub withdraw_failed: &'static str,
    pub withdrawn_title: &'static str,
    pub withdrawn_text: &'static str,

    pub yes: &'static str,
    pub no: &'static str,
}

/// English.
pub static EN: Strings = Strings {
    switch_to: "Dansk",
    skip_to_content: "Skip to content",
    nav_label: "Main",
    nav_donate: "Donate",
    nav_donations: "My donations",
    footer: "This app runs on your own device. Your export, your CPR number and your key never leave it: only the rows you approve, sealed to the intake, and a pseudonym computed on this device.",
    steps_label: "Progress",
    step_names: ["Study", "Export", "CPR number", "Preview", "Consent", "Receipt"],
    step_of: "Step {} of {}",
    error_heading: "Please check",

    study_title: "Choose a study",
    study_intro: "These studies are published by the intake and signed by the data steward. Choose the one you want to donate to.",
    study_legend: "Studies",
    study_none: "The intake publishes no studies at the moment.",
    study_unreachable: "The intake could not be reached: {}",
    study_choose: "Choose a study.",
    study_unknown: "That study is not published by the intake.",
    continue_: "Continue",

    export_title: "Choose your health export",
    export_intro: "Choose the file your health app or your record exported. It is read on this device only.",
    export_formats: "FHIR JSON or NDJSON, a Synthea CSV table, or an Apple Health export.xml or export.zip; at most {} MB.",
    export_label: "Export file",
    export_hint: "The file is copied into a private folder of this app and deleted when the app stops or after your donation.",
    export_button: "Read the file",
    export_progress: "Reading the file",
    export_missing: "Choose a file.",
    export_too_large: "The file is larger than {} MB.",
    export_failed: "The file could not be received: {}",
    export_current: "Current file: {} ({} bytes). Choose another to replace it.",

    identity_title: "Your CPR number and postcode",
    identity_intro: "Your CPR number never leaves this device. It is used here to compute your study pseudonym blindly with the pseudonymisers (they see only a random-looking number) and, if the export has none, your birth date.",
    cpr_label: "CPR number",
    cpr_hint: "10 digits, DDMMYY-SSSS. It is not shown again and not stored.",
    cpr_format: "A CPR number is 10 digits, DDMMYY-SSSS.",
    cpr_date: "The first six digits of the CPR number are not a valid date.",
    cpr_mismatch: "The CPR number does not match the one in the export. Check for a typo.",
    postcode_label: "Postcode (optional)",
    postcode_hint: "4 digits. Leave it empty to use the postcode in the export. Only your region leaves the device.",
    postcode_format: "A Danish postcode is 4 digits.",
    identity_button: "Show what would leave",
    import_failed: "The export could not be read: {}",
    several_patients: "The export holds the records of more than one person. Export only your own record.",

    preview_title: "What would leave this device",
    preview_intro: "{} rows would leave this device, each with your study pseudonym. Untick a row to leave it out.",
    preview_none: "Nothing in this export matches what the study asks for, so there is nothing to donate.",
    preview_caption: "The rows exactly as they would leave",
    preview_include: "Include",
    preview_include_row: "Include row {} ({})",
    preview_pseudonym: "your study pseudonym",
    preview_not_observed: "not observed",
    preview_columns: "What the columns hold",
    preview_dropped: "What does not leave this device",
    preview_dropped_intro: "Everything else in the export stays here. Counted by reason:",
    preview_dropped_nothing: "Nothing was left out.",
    preview_dropped_what: "What",
    preview_dropped_count: "How many",
    preview_import_skipped: "records skipped while reading: {}",
    preview_button: "Continue to consent",
    preview_keep_one: "Keep at least one row, or stop here: nothing has been sent.",

    consent_title: "Your consent",
    consent_intro: "Read what you consent to. Nothing is sent until you press the button at the end.",
    consent_study: "Study",
    consent_controller: "Data controller",
    consent_contact: "Contact",
    consent_retention: "Retention",
    consent_retention_days: "{} days after your donation",
    consent_steward: "Signed by the data steward key",
    consent_purposes: "Purposes",
    consent_purposes_hint: "Tick each purpose you consent to. Your data is used only for the purposes you tick.",
    consent_expiry: "Consent lasts for (days)",
    consent_expiry_hint: "From 1 to {} days. After that your data is no longer used.",
    consent_withdraw_title: "How to withdraw",
    consent_withdraw_text: "You can withdraw at any time under \u{201c}My donations\u{201d} in this app (or with datadonor withdraw). From then on your data is no longer used, and the data steward erases your rows.",
    consent_notice_title: "Consent notice",
    consent_notice_text: "Your signed consent names this notice by its SHA-256 digest:",
    consent_notice_missing: "The notice text could not be fetched from the intake ({}). Your signed consent names the notice by the SHA-256 digest below.",
    consent_button: "I consent: donate {} rows",
    consent_no_purpose: "Tick at least one purpose.",
    consent_bad_expiry: "Enter a number of days from 1 to {}.",
    donate_failed: "The donation failed: {}",
    donate_not_witnessed: "The intake recorded your donation, but no checkpoint cosigned by your witnesses covers it yet. The receipt is stored; check it later under \u{201c}My donations\u{201d}. ({})",

    receipt_title: "Thank you: your donation is recorded",
    receipt_rows: "{} rows were donated to \u{201c}{}\u{201d}.",
    receipt_entry: "The intake recorded your consent and donation at entry {} of its public consent ledger.",
    receipt_verified: "This device checked the intake's signed receipt and that the entry is in the ledger's signed tree of {} entries.",
    receipt_witnessed: "The ledger's checkpoint is cosigned by the independent witnesses you require: {}.",
    receipt_pseudonym: "Your pseudonym in this study",
    receipt_pseudonymisers: "The pseudonym was computed on this device with {} pseudonymiser instances; none of them saw your CPR number.",
    receipt_stored: "The receipt is stored on this device.",
    receipt_next: "See my donations",

    donations_title: "My donations",
    donations_intro: "The receipts stored on this device, each checked again now against the intake's current ledger.",
    donations_none: "No donations yet.",
    donations_caption: "Stored receipts",
    col_study: "Study",
    col_kind: "Kind",
    col_when: "When",
    col_entry: "Ledger entry",
    col_check: "Check",
    col_action: "Action",
    kind_donation: "Donation",
    kind_withdrawal: "Withdrawal",
    check_ok: "Verified: in the current ledger of {} entries",
    check_failed: "Not verified: {}",
    check_other_intake: "At another intake: not checked here",
    withdrawn: "Withdrawn",
    withdraw_button: "Withdraw\u{2026}",

    withdraw_title: "Withdraw your consent?",
    withdraw_text: "Your donation to \u{201c}{}\u{201d} (ledger entry {}) will no longer be used, and the data steward erases its rows. This cannot be undone, but you can donate again later.",
    withdraw_confirm: "Yes, withdraw",
    withdraw_cancel: "Cancel",
    withdraw_unknown: "There is no stored donation with that receipt.",
    withdraw_failed: "The withdrawal failed: {}",
    withdrawn_title: "Consent withdrawn",
    withdrawn_text: "Your withdrawal from \u{201c}{}\u{201d} is recorded at entry {} of the consent ledger; this device verified the receipt.",

    yes: "yes",
    no: "no",
};

/// Danish.
pub static DA: Strings = Strings {
    switch_to: "English",
    skip_to_content: "Gå til indholdet",
    nav_label: "Hovedmenu",
    nav_donate: "Donér",
    nav_donations: "Mine donationer",
    footer: "Denne app kører på din egen enhed. Dit udtræk, dit CPR-nummer og din nøgle forlader den aldrig: kun de rækker, du godkender, forseglet til modtageren, og et pseudonym beregnet på denne enhed.",
    steps_label: "Forløb",
    step_names: ["Studie", "Udtræk", "CPR-nummer", "Gennemsyn", "Samtykke", "Kvittering"],
    step_of: "Trin {} af {}",
    error_heading: "Kontrollér venligst",

    study_title: "Vælg et studie",
    study_intro: "Disse studier udgives af modtageren og er underskrevet af dataforvalteren. Vælg det studie, du vil donere til.",
    study_legend: "Studier",
    study_none: "Modtageren udgiver ingen studier lige nu.",
    study_unreachable: "Modtageren kunne ikke nås: {}",
    study_choose: "Vælg et studie.",
    study_unknown: "Det studie udgives ikke af modtageren.",
    continue_: "Fortsæt",

    export_title: "Vælg dit sundhedsudtræk",
    export_intro: "Vælg den fil, din sundhedsapp eller din journal har eksporteret. Den læses kun på denne enhed.",
    export_formats: "FHIR JSON eller NDJSON, en Synthea CSV-tabel eller en Apple Health export.xml eller export.zip; højst {} MB.",
    export_label: "Udtræksfil",
    export_hint: "Filen kopieres til en privat mappe i denne app og slettes, når appen stopper, eller efter din donation.",
    export_button: "Læs filen",
    export_progress: "Læser filen",
    export_missing: "Vælg en fil.",
    export_too_large: "Filen er større end {} MB.",
    export_failed: "Filen kunne ikke modtages: {}",
    export_current: "Nuværende fil: {} ({} byte). Vælg en anden for at erstatte den.",

    identity_title: "Dit CPR-nummer og postnummer",
    identity_intro: "Dit CPR-nummer forlader aldrig denne enhed. Det bruges her til at beregne dit pseudonym i studiet i blinde sammen med pseudonymiseringstjenesterne (de ser kun et tilfældigt udseende tal) og, hvis udtrækket ikke har den, din fødselsdato.",
    cpr_label: "CPR-nummer",
    cpr_hint: "10 cifre, DDMMÅÅ-SSSS. Det vises ikke igen og gemmes ikke.",
    cpr_format: "Et CPR-nummer er 10 cifre, DDMMÅÅ-SSSS.",
    cpr_date: "CPR-nummerets første seks cifre er ikke en gyldig dato.",
    cpr_mismatch: "CPR-nummeret passer ikke med det i udtrækket. Kontrollér for tastefejl.",
    postcode_label: "Postnummer (valgfrit)",
    postcode_hint: "4 cifre. Lad feltet stå tomt for at bruge postnummeret i udtrækket. Kun din region forlader enheden.",
    postcode_format: "Et dansk postnummer er 4 cifre.",
    identity_button: "Vis hvad der ville blive sendt",
    import_failed: "Udtrækket kunne ikke læses: {}",
    several_patients: "Udtrækket indeholder journaler for mere end én person. Eksportér kun din egen journal.",

    preview_title: "Det her ville forlade enheden",
    preview_intro: "{} rækker ville forlade denne enhed, hver med dit pseudonym i studiet. Fjern fluebenet ved en række for at udelade den.",
    preview_none: "Intet i dette udtræk passer til det, studiet spørger om, så der er intet at donere.",
    preview_caption: "Rækkerne præcis som de ville blive sendt",
    preview_include: "Medtag",
    preview_include_row: "Medtag række {} ({})",
    preview_pseudonym: "dit pseudonym i studiet",
    preview_not_observed: "ikke målt",
    preview_columns: "Hvad kolonnerne indeholder",
    preview_dropped: "Det her forlader ikke enheden",
    preview_dropped_intro: "Alt andet i udtrækket bliver her. Optalt efter årsag:",
    preview_dropped_nothing: "Intet blev udeladt.",
    preview_dropped_what: "Hvad",
    preview_dropped_count: "Antal",
    preview_import_skipped: "poster sprunget over under læsningen: {}",
    preview_button: "Videre til samtykke",
    preview_keep_one: "Behold mindst én række, eller stop her: intet er sendt.",

    consent_title: "Dit samtykke",
    consent_intro: "Læs hvad du giver samtykke til. Intet sendes, før du trykker på knappen nederst.",
    consent_study: "Studie",
    consent_controller: "Dataansvarlig",
    consent_contact: "Kontakt",
    consent_retention: "Opbevaring",
    consent_retention_days: "{} dage efter din donation",
    consent_steward: "Underskrevet med dataforvalterens nøgle",
    consent_purposes: "Formål",
    consent_purposes_hint: "Sæt flueben ved hvert formål, du giver samtykke til. Dine data bruges kun til de formål, du vælger.",
    consent_expiry: "Samtykket gælder i (dage)",
    consent_expiry_hint: "Fra 1 til {} dage. Derefter bruges dine data ikke længere.",
    consent_withdraw_title: "Sådan trækker du samtykket tilbage",
    consent_withdraw_text: "Du kan når som helst trække samtykket tilbage under \u{201d}Mine donationer\u{201d} i denne app (eller med datadonor withdraw). Derefter bruges dine data ikke længere, og dataforvalteren sletter dine rækker.",
    consent_notice_title: "Samtykkeerklæring",
    consent_notice_text: "Dit underskrevne samtykke henviser til erklæringen ved dens SHA-256-værdi:",
    consent_notice_missing: "Erklæringens tekst kunne ikke hentes fra modtageren ({}). Dit underskrevne samtykke henviser til erklæringen ved SHA-256-værdien nedenfor.",
    consent_button: "Jeg giver samtykke: donér {} rækker",
    consent_no_purpose: "Sæt flueben ved mindst ét formål.",
    consent_bad_expiry: "Angiv et antal dage fra 1 til {}.",
    donate_failed: "Donationen mislykkedes: {}",
    donate_not_witnessed: "Modtageren registrerede din donation, men endnu dækker intet kontrolpunkt medunderskrevet af dine vidner den. Kvitteringen er gemt; kontrollér den senere under \u{201d}Mine donationer\u{201d}. ({})",

    receipt_title: "Tak: din donation er registreret",
    receipt_rows: "{} rækker blev doneret til \u{201d}{}\u{201d}.",
    receipt_entry: "Modtageren registrerede dit samtykke og din donation som post {} i sin offentlige samtykkelog.",
    receipt_verified: "Denne enhed har kontrolleret modtagerens underskrevne kvittering, og at posten er i loggens underskrevne træ med {} poster.",
    receipt_witnessed: "Loggens kontrolpunkt er medunderskrevet af de uafhængige vidner, du kræver: {}.",
    receipt_pseudonym: "Dit pseudonym i dette studie",
    receipt_pseudonymisers: "Pseudonymet blev beregnet på denne enhed med {} pseudonymiseringstjenester; ingen af dem så dit CPR-nummer.",
    receipt_stored: "Kvitteringen er gemt på denne enhed.",
    receipt_next: "Se mine donationer",

    donations_title: "Mine donationer",
    donations_intro: "Kvitteringerne gemt på denne enhed, hver kontrolleret igen nu mod modtagerens nuværende log.",
    donations_none: "Ingen donationer endnu.",
    donations_caption: "Gemte kvitteringer",
    col_study: "Studie",
    col_kind: "Type",
    col_when: "Tidspunkt",
    col_entry: "Logpost",
    col_check: "Kontrol",
    col_action: "Handling",
    kind_donation: "Donation",
    kind_withdrawal: "Tilbagetrækning",
    check_ok: "Kontrolleret: i den nuværende log med {} poster",
    check_failed: "Ikke kontrolleret: {}",
    check_other_intake: "Hos en anden modtager: ikke kontrolleret her",
    withdrawn: "Trukket tilbage",
    withdraw_button: "Træk tilbage\u{2026}",

    withdraw_title: "Trække dit samtykke tilbage?",
    withdraw_text: "Din donation til \u{201d}{}\u{201d} (logpost {}) bruges ikke længere, og dataforvalteren sletter dens rækker. Det kan ikke fortrydes, men du kan donere igen senere.",
    withdraw_confirm: "Ja, træk tilbage",
    withdraw_cancel: "Annullér",
    withdraw_unknown: "Der er ingen gemt donation med den kvittering.",
    withdraw_failed: "Tilbagetrækningen mislykkedes: {}",
    withdrawn_title: "Samtykket er trukket tilbage",
    withdrawn_text: "Din tilbagetrækning fra \u{201d}{}\u{201d} er registreret som post {} i samtykkeloggen; denne enhed har kontrolleret kvitteringen.",

    yes: "ja",
    no: "nej",
};

/// Why something stays on the device, in `lang`.
pub fn drop_reason(lang: Lang, reason: DropReason) -> &'static str {
    if lang == Lang::En {
        return reason.describe();
    }
    match reason {
        DropReason::Name => "navne",
        DropReason::Address => "adresser",
        DropReason::Identifier => "identifikatorer (CPR, journalnummer, pas, ...)",
        DropReason::ExactBirthDate => "præcis fødselsdato (kun aldersgruppen sendes)",
        DropReason::ExactPostcode => "præcist postnummer (kun regionen sendes)",
        DropReason::FreeText => "fritekstsvar",
        DropReason::NoValue => "målinger uden værdi",
        DropReason::ObservationNotRequested => "målinger, studiet ikke spørger om",
        DropReason::UnknownUnit => "målinger i en ukendt enhed",
        DropReason::OutOfRange => "målinger uden for feltets interval",
        DropReason::NoDate => "målinger uden dato",
        DropReason::ConditionNotRequested => "diagnoser, studiet ikke spørger om",
        DropReason::ConditionWithoutOnset => "studiediagnoser uden startdato",
        DropReason::Medication => "medicin",
        DropReason::OtherPatient => "andre personers poster i udtrækket",
        DropReason::RowNoBirthDate => "perioder udeladt: ingen fødselsdato",
        DropReason::RowUnderMinAge => "perioder udeladt: under studiets minimumsalder",
        DropReason::RowUnknownPostcode => "perioder udeladt: postnummer ukendt eller ikke dansk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_preferred_supported_language() {
        assert_eq!(Lang::from_accept_language(None), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("da-DK,da;q=0.9")), Lang::Da);
        assert_eq!(
            Lang::from_accept_language(Some("de-DE, en;q=0.5, da;q=0.8")),
            Lang::Da
        );
        assert_eq!(Lang::from_accept_language(Some("en-GB,da;q=0.2")), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("fr, da;q=0")), Lang::En);
        assert_eq!(Lang::from_accept_language(Some(";;,q=x")), Lang::En);
    }

    #[test]
    fn fill_replaces_in_order() {
        assert_eq!(fill("{} of {}", &["2", "6"]), "2 of 6");
        assert_eq!(fill("no args {}", &[]), "no args ");
    }
}
