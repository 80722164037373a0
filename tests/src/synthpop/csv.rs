//! Synthea CSV writer of the synthetic population: `patients.csv`,
//! `observations.csv`, `conditions.csv` and `medications.csv` with exactly the
//! column headers of Synthea's CSV exporter (as in the published samples in
//! `testdata/data/`).
//!
//! Mapping from [`Donor`]: `Id` is the donor UUID; `SSN` carries the CPR number
//! in its display form "DDMMYY-SSSS" (Synthea writes SSNs with dashes);
//! `FIRST`/`LAST` the names (without Synthea's numeric suffixes); `ADDRESS`
//! the street line, `CITY` the postal district, `STATE` the region name,
//! `COUNTY` "<municipality> Kommune", `ZIP` the postcode; `BIRTHPLACE`
//! "<municipality>  <region>  DK" (Synthea's comma-less style). `RACE` and
//! `ETHNICITY` are empty: Danish registers do not record them. Blood pressure
//! is written as two rows (8462-4 then 8480-6) and no panel row, as Synthea
//! does; values have one decimal. Text fields are cleaned as Synthea does
//! (commas and line breaks become spaces). `PAYER` is [`DANISH_PUBLIC_PAYER_ID`].
//! Dates are `YYYY-MM-DD`, times UTC `YYYY-MM-DDTHH:MM:SSZ`.
//!
//! The free-text note ([`Donor::note`]) has no Synthea CSV column and is not
//! written.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::fhir::{fmt_date, fmt_time};
use super::{ConditionKind, Donor};

/// Header of Synthea's `patients.csv`.
pub const PATIENTS_HEADER: [&str; 25] = [
    "Id",
    "BIRTHDATE",
    "DEATHDATE",
    "SSN",
    "DRIVERS",
    "PASSPORT",
    "PREFIX",
    "FIRST",
    "LAST",
    "SUFFIX",
    "MAIDEN",
    "MARITAL",
    "RACE",
    "ETHNICITY",
    "GENDER",
    "BIRTHPLACE",
    "ADDRESS",
    "CITY",
    "STATE",
    "COUNTY",
    "ZIP",
    "LAT",
    "LON",
    "HEALTHCARE_EXPENSES",
    "HEALTHCARE_COVERAGE",
];

/// Header of Synthea's `observations.csv`.
pub const OBSERVATIONS_HEADER: [&str; 9] = [
    "DATE",
    "PATIENT",
    "ENCOUNTER",
    "CATEGORY",
    "CODE",
    "DESCRIPTION",
    "VALUE",
    "UNITS",
    "TYPE",
];

/// Header of Synthea's `conditions.csv`.
pub const CONDITIONS_HEADER: [&str; 6] = [
    "START",
    "STOP",
    "PATIENT",
    "ENCOUNTER",
    "CODE",
    "DESCRIPTION",
];

/// Header of Synthea's `medications.csv`.
pub const MEDICATIONS_HEADER: [&str; 13] = [
    "START",
    "STOP",
    "PATIENT",
    "PAYER",
    "ENCOUNTER",
    "CODE",
    "DESCRIPTION",
    "BASE_COST",
    "PAYER_COVERAGE",
    "DISPENSES",
    "TOTALCOST",
    "REASONCODE",
    "REASONDESCRIPTION",
];

/// The payer UUID written in `medications.csv`: the Danish public health
/// insurance (sygesikringen), which covers the whole population.
pub const DANISH_PUBLIC_PAYER_ID: &str = "5d2c1e0a-7b1f-4c3e-9a6d-2f8e4b7c1a90";

/// Nominal cost of one encounter, for `HEALTHCARE_COVERAGE`.
const ENCOUNTER_COST: f64 = 85.55;

/// Writes the four CSV files into `dir` (created if missing), streaming the
/// donors one at a time (memory stays constant whatever the population
/// size). Returns the number of donors written.
///
/// # Errors
///
/// Any I/O error creating `dir` or writing the files.
pub fn write_synthea_csv(donors: impl Iterator<Item = Donor>, dir: &Path) -> io::Result<u64> {
    fs::create_dir_all(dir)?;
    let open = |name: &str| -> io::Result<::csv::Writer<BufWriter<File>>> {
        let file = File::create(dir.join(name))?;
        Ok(::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::Any(b'\n'))
            .from_writer(BufWriter::with_capacity(1 << 16, file)))
    };
    let mut patients = open("patients.csv")?;
    let mut observations = open("observations.csv")?;
    let mut conditions = open("conditions.csv")?;
    let mut medications = open("medications.csv")?;
    patients.write_record(PATIENTS_HEADER)?;
    observations.write_record(OBSERVATIONS_HEADER)?;
    conditions.write_record(CONDITIONS_HEADER)?;
    medications.write_record(MEDICATIONS_HEADER)?;

    let mut n = 0;
    for donor in donors {
        write_donor(
            &donor,
            &mut patients,
            &mut observations,
            &mut conditions,
            &mut medications,
        )?;
        n += 1;
    }
    for w in [
        &mut patients,
        &mut observations,
        &mut conditions,
        &mut medications,
    ] {
        w.flush()?;
    }
    Ok(n)
}

fn write_donor<W: Write>(
    d: &Donor,
    patients: &mut ::csv::Writer<W>,
    observations: &mut ::csv::Writer<W>,
    conditions: &mut ::csv::Writer<W>,
    medications: &mut ::csv::Writer<W>,
) -> io::Result<()> {
    let medication_cost: f64 = d
        .medications
        .iter()
        .map(|m| m.kind.base_cost() * f64::from(m.dispenses))
        .sum();
    let coverage = medication_cost + ENCOUNTER_COST * d.encounters.len() as f64;
    patients.write_record([
        d.id.as_str(),
        &fmt_date(d.birth_date),
        "",
        &d.cpr_display(),
        "",
        "",
        "",
        &d.given_name,
        &d.family_name,
        "",
        "",
        "",
        "",
        "",
        d.sex.csv_code(),
        &clean(&format!("{}  {}  DK", d.municipality, d.region.name())),
        &clean(&d.address_line),
        &clean(&d.city),
        d.region.name(),
        &format!("{} Kommune", d.municipality),
        &d.postcode,
        &d.lat.to_string(),
        &d.lon.to_string(),
        "0.00",
        &format!("{coverage:.2}"),
    ])?;

    let encounter_id = |i: usize| d.encounters.get(i).map_or("", |e| e.id.as_str());
    for obs in &d.observations {
        let date = format!("{}Z", fmt_time(obs.at));
        for (code, value) in obs.measurement.parts() {
            observations.write_record([
                date.as_str(),
                &d.id,
                encounter_id(obs.encounter),
                code.category,
                code.code,
                &clean(code.display),
                &format!("{value:.1}"),
                code.unit,
                "numeric",
            ])?;
        }
    }

    for c in &d.conditions {
        conditions.write_record([
            fmt_date(c.onset).as_str(),
            &c.abatement.map(fmt_date).unwrap_or_default(),
            &d.id,
            encounter_id(c.encounter),
            c.kind.snomed(),
            &clean(c.kind.display()),
        ])?;
    }

    for m in &d.medications {
        let total = m.kind.base_cost() * f64::from(m.dispenses);
        let reason: ConditionKind = m.reason;
        medications.write_record([
            format!("{}Z", fmt_time(m.start)).as_str(),
            &m.stop
                .map(|t| format!("{}Z", fmt_time(t)))
                .unwrap_or_default(),
            &d.id,
            DANISH_PUBLIC_PAYER_ID,
            encounter_id(m.encounter),
            m.kind.rxnorm(),
            &clean(m.kind.display()),
            &format!("{:.2}", m.kind.base_cost()),
            &format!("{total:.2}"),
            &m.dispenses.to_string(),
            &format!("{total:.2}"),
            reason.snomed(),
            &clean(reason.display()),
        ])?;
    }
    Ok(())
}

/// Synthea's CSV text cleaning: commas and line breaks become spaces, so no
/// field ever needs quoting.
fn clean(s: &str) -> String {
    s.replace(['\r', '\n', ','], " ").trim().to_string()
}
