//! FHIR R4 writer of the synthetic population: one `transaction` Bundle per
//! donor, shaped like Synthea's (`fullUrl` `urn:uuid:…`, `request` POST to the
//! resource type, references by `urn:uuid:`).
//!
//! A bundle holds, in order: the Patient; one Encounter per
//! [`Donor::encounters`]; one Observation per [`Donor::observations`]
//! (valueQuantity in UCUM units; blood pressure as the 85354-9 panel with
//! 8480-6/8462-4 components; the last HbA1c carries [`Donor::note`] in
//! `note[0].text`); one Condition per [`Donor::conditions`]; one
//! MedicationRequest per [`Donor::medications`]. [`resource_counts`] gives the
//! expected numbers. [`write_ndjson`] writes the same resources as FHIR Bulk
//! Data NDJSON, one resource per line.
//!
//! Identifying data a donor client must strip: `Patient.identifier` (CPR under
//! [`CPR_SYSTEM`](super::CPR_SYSTEM)), `Patient.name`, `Patient.address`,
//! `Patient.birthDate`, `Patient.text.div` (name, CPR, address),
//! `Encounter.subject.display` (name) and `Observation.note` (name, CPR,
//! address). Times are UTC and written with a `+00:00` offset, as Synthea v3
//! does.

use std::collections::BTreeMap;
use std::io::{self, Write};

use jiff::civil::{Date, DateTime};
use serde_json::{json, Value};

use super::{Donor, LoincCode, Measurement, CPR_SYSTEM};

const UCUM: &str = "http://unitsofmeasure.org";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// Writes the donor's transaction Bundle as pretty-printed JSON (like the
/// Synthea samples), followed by a newline.
///
/// # Errors
///
/// Any I/O error of `w`.
pub fn write_fhir_bundle(donor: &Donor, mut w: impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut w, &bundle_json(donor))?;
    w.write_all(b"\n")?;
    w.flush()
}

/// Writes FHIR Bulk Data NDJSON: every resource of every donor's Bundle as one
/// compact JSON object per line (the Patient first, then its Encounters,
/// Observations, Conditions and MedicationRequests), streaming: only one
/// donor is held at a time. Returns the number of donors written.
///
/// # Errors
///
/// Any I/O error of `w`.
pub fn write_ndjson(donors: impl Iterator<Item = Donor>, mut w: impl Write) -> io::Result<u64> {
    let mut n = 0;
    for donor in donors {
        for (_, _, resource) in resources(&donor) {
            serde_json::to_writer(&mut w, &resource)?;
            w.write_all(b"\n")?;
        }
        n += 1;
    }
    w.flush()?;
    Ok(n)
}

/// The number of resources of each type in the donor's Bundle (types with
/// none are left out).
pub fn resource_counts(donor: &Donor) -> BTreeMap<&'static str, usize> {
    [
        ("Patient", 1),
        ("Encounter", donor.encounters.len()),
        ("Observation", donor.observations.len()),
        ("Condition", donor.conditions.len()),
        ("MedicationRequest", donor.medications.len()),
    ]
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .collect()
}

/// The donor's transaction Bundle as a JSON value.
pub fn bundle_json(donor: &Donor) -> Value {
    let entries: Vec<Value> = resources(donor)
        .into_iter()
        .map(|(id, resource_type, resource)| entry(id, resource_type, resource))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries
    })
}

/// The donor's resources in Bundle order, with their ids and types.
fn resources(donor: &Donor) -> Vec<(&str, &'static str, Value)> {
    let patient_ref = format!("urn:uuid:{}", donor.id);
    let mut entries = Vec::with_capacity(
        1 + donor.encounters.len()
            + donor.observations.len()
            + donor.conditions.len()
            + donor.medications.len(),
    );
    entries.push((donor.id.as_str(), "Patient", patient(donor)));

    for enc in &donor.encounters {
        let resource = json!({
            "resourceType": "Encounter",
            "id": enc.id,
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB"
            },
            "type": [codeable(SNOMED, enc.kind.snomed(), enc.kind.display())],
            "subject": { "reference": patient_ref, "display": donor.full_name() },
            "period": { "start": timestamp(enc.start), "end": timestamp(enc.end) }
        });
        entries.push((enc.id.as_str(), "Encounter", resource));
    }

    let note_at = donor.note_observation();
    for (i, obs) in donor.observations.iter().enumerate() {
        let code = obs.measurement.code();
        let mut resource = json!({
            "resourceType": "Observation",
            "id": obs.id,
            "status": "final",
            "category": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": code.category,
                    "display": code.category
                }]
            }],
            "code": codeable(LOINC, code.code, code.display),
            "subject": { "reference": patient_ref },
            "encounter": { "reference": encounter_ref(donor, obs.encounter) },
            "effectiveDateTime": timestamp(obs.at),
            "issued": issued(obs.at)
        });
        if let Some(profile) = code.profile {
            resource["meta"] = json!({
                "profile": [profile, "http://hl7.org/fhir/StructureDefinition/vitalsigns"]
            });
        }
        match obs.measurement {
            Measurement::BloodPressure { .. } => {
                let components: Vec<Value> = obs
                    .measurement
                    .parts()
                    .map(|(c, v)| {
                        json!({
                            "code": codeable(LOINC, c.code, c.display),
                            "valueQuantity": quantity(c, v)
                        })
                    })
                    .collect();
                resource["component"] = Value::Array(components);
            }
            m => {
                if let Some(v) = m.value() {
                    resource["valueQuantity"] = quantity(code, v);
                }
            }
        }
        if note_at == Some(i) {
            resource["note"] = json!([{ "text": donor.note }]);
        }
        entries.push((obs.id.as_str(), "Observation", resource));
    }

    for cond in &donor.conditions {
        let mut resource = json!({
            "resourceType": "Condition",
            "id": cond.id,
            "clinicalStatus": {
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": if cond.abatement.is_some() { "resolved" } else { "active" }
                }]
            },
            "verificationStatus": {
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed"
                }]
            },
            "category": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                    "code": "encounter-diagnosis",
                    "display": "Encounter Diagnosis"
                }]
            }],
            "code": codeable(SNOMED, cond.kind.snomed(), cond.kind.display()),
            "subject": { "reference": patient_ref },
            "encounter": { "reference": encounter_ref(donor, cond.encounter) },
            "onsetDateTime": day_timestamp(donor, cond.encounter, cond.onset),
            "recordedDate": day_timestamp(donor, cond.encounter, cond.onset)
        });
        if let Some(end) = cond.abatement {
            resource["abatementDateTime"] = json!(format!("{}T00:00:00+00:00", fmt_date(end)));
        }
        entries.push((cond.id.as_str(), "Condition", resource));
    }

    for med in &donor.medications {
        let condition_ref = donor
            .conditions
            .iter()
            .find(|c| c.kind == med.reason)
            .map(|c| format!("urn:uuid:{}", c.id));
        let mut resource = json!({
            "resourceType": "MedicationRequest",
            "id": med.id,
            "status": if med.stop.is_some() { "stopped" } else { "active" },
            "intent": "order",
            "medicationCodeableConcept": codeable(RXNORM, med.kind.rxnorm(), med.kind.display()),
            "subject": { "reference": patient_ref },
            "encounter": { "reference": encounter_ref(donor, med.encounter) },
            "authoredOn": timestamp(med.start),
            "dosageInstruction": [{
                "sequence": 1,
                "timing": { "repeat": { "frequency": 1, "period": 1.0, "periodUnit": "d" } },
                "asNeededBoolean": false,
                "doseAndRate": [{
                    "type": {
                        "coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/dose-rate-type",
                            "code": "ordered",
                            "display": "Ordered"
                        }]
                    },
                    "doseQuantity": { "value": 1.0 }
                }]
            }]
        });
        if let Some(r) = condition_ref {
            resource["reasonReference"] = json!([{ "reference": r }]);
        }
        entries.push((med.id.as_str(), "MedicationRequest", resource));
    }

    entries
}

fn patient(donor: &Donor) -> Value {
    let div = format!(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">{}, født {} (CPR {}), {}, {} {}, {}</div>",
        xml_escape(&donor.full_name()),
        fmt_date(donor.birth_date),
        xml_escape(&donor.cpr_display()),
        xml_escape(&donor.address_line),
        xml_escape(&donor.postcode),
        xml_escape(&donor.city),
        xml_escape(donor.region.name()),
    );
    json!({
        "resourceType": "Patient",
        "id": donor.id,
        "text": { "status": "generated", "div": div },
        "identifier": [
            {
                "system": "https://github.com/synthetichealth/synthea",
                "value": donor.id
            },
            {
                "type": {
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "NI",
                        "display": "National unique individual identifier"
                    }],
                    "text": "CPR-nummer"
                },
                "system": CPR_SYSTEM,
                "value": donor.cpr
            }
        ],
        "name": [{
            "use": "official",
            "family": donor.family_name,
            "given": [donor.given_name]
        }],
        "gender": donor.sex.fhir_gender(),
        "birthDate": fmt_date(donor.birth_date),
        "address": [{
            "extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                "extension": [
                    { "url": "latitude", "valueDecimal": donor.lat },
                    { "url": "longitude", "valueDecimal": donor.lon }
                ]
            }],
            "line": [donor.address_line],
            "city": donor.city,
            "district": donor.municipality,
            "state": donor.region.name(),
            "postalCode": donor.postcode,
            "country": "DK"
        }],
        "multipleBirthBoolean": false,
        "communication": [{
            "language": {
                "coding": [{ "system": "urn:ietf:bcp:47", "code": "da", "display": "Danish" }],
                "text": "Danish"
            }
        }]
    })
}

fn entry(id: &str, resource_type: &str, resource: Value) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:{id}"),
        "resource": resource,
        "request": { "method": "POST", "url": resource_type }
    })
}

fn codeable(system: &str, code: &str, display: &str) -> Value {
    json!({
        "coding": [{ "system": system, "code": code, "display": display }],
        "text": display
    })
}

fn quantity(code: &LoincCode, value: f64) -> Value {
    json!({ "value": value, "unit": code.unit, "system": UCUM, "code": code.unit })
}

fn encounter_ref(donor: &Donor, index: usize) -> String {
    match donor.encounters.get(index) {
        Some(e) => format!("urn:uuid:{}", e.id),
        None => String::new(),
    }
}

/// The encounter's time if it is on `day`, else midnight of `day`.
fn day_timestamp(donor: &Donor, encounter: usize, day: Date) -> String {
    match donor.encounters.get(encounter) {
        Some(e) if e.start.date() == day => timestamp(e.start),
        _ => format!("{}T00:00:00+00:00", fmt_date(day)),
    }
}

pub(super) fn fmt_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

pub(super) fn fmt_time(t: DateTime) -> String {
    format!(
        "{}T{:02}:{:02}:{:02}",
        fmt_date(t.date()),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn timestamp(t: DateTime) -> String {
    format!("{}+00:00", fmt_time(t))
}

fn issued(t: DateTime) -> String {
    format!("{}.000+00:00", fmt_time(t))
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
