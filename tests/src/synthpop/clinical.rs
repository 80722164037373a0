//! Clinical code tables of the synthetic population: the LOINC codes of the
//! measurements, the SNOMED CT codes of the conditions, the RxNorm codes of the
//! medications and the SNOMED CT codes of the encounter types.
//!
//! Codes and display strings are the ones Synthea emits, so that an importer
//! written against real Synthea output maps them unchanged.
//!
//! HbA1c is emitted as LOINC 4548-4 in **percent** (NGSP/DCCT units), as in
//! US (Synthea) data. Danish laboratories report HbA1c in mmol/mol (IFCC,
//! NPU27300); convert with [`hba1c_percent_to_mmol_mol`]
//! (mmol/mol = 10.929 × (% − 2.15)): 6.5 % = 48 mmol/mol, the diagnostic
//! threshold for diabetes in Denmark.

/// A LOINC observation code with its Synthea display text, UCUM unit and FHIR
/// observation category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoincCode {
    /// The LOINC code, e.g. "4548-4".
    pub code: &'static str,
    /// The display text Synthea uses, e.g. "Body Mass Index".
    pub display: &'static str,
    /// The UCUM unit (also the human-readable unit), e.g. "kg/m2"; empty for
    /// panels.
    pub unit: &'static str,
    /// The FHIR observation category code: "vital-signs" or "laboratory".
    pub category: &'static str,
    /// The FHIR core profile of the vital sign, if any (e.g. the BMI profile).
    pub profile: Option<&'static str>,
}

/// LOINC 8302-2 Body Height, cm.
pub const BODY_HEIGHT: LoincCode = LoincCode {
    code: "8302-2",
    display: "Body Height",
    unit: "cm",
    category: "vital-signs",
    profile: Some("http://hl7.org/fhir/StructureDefinition/bodyheight"),
};
/// LOINC 29463-7 Body Weight, kg.
pub const BODY_WEIGHT: LoincCode = LoincCode {
    code: "29463-7",
    display: "Body Weight",
    unit: "kg",
    category: "vital-signs",
    profile: Some("http://hl7.org/fhir/StructureDefinition/bodyweight"),
};
/// LOINC 39156-5 Body Mass Index, kg/m2.
pub const BODY_MASS_INDEX: LoincCode = LoincCode {
    code: "39156-5",
    display: "Body Mass Index",
    unit: "kg/m2",
    category: "vital-signs",
    profile: Some("http://hl7.org/fhir/StructureDefinition/bmi"),
};
/// LOINC 85354-9 Blood Pressure panel (components 8480-6 and 8462-4).
pub const BLOOD_PRESSURE: LoincCode = LoincCode {
    code: "85354-9",
    display: "Blood Pressure",
    unit: "",
    category: "vital-signs",
    profile: Some("http://hl7.org/fhir/StructureDefinition/bp"),
};
/// LOINC 8480-6 Systolic Blood Pressure, mm[Hg].
pub const SYSTOLIC_BP: LoincCode = LoincCode {
    code: "8480-6",
    display: "Systolic Blood Pressure",
    unit: "mm[Hg]",
    category: "vital-signs",
    profile: None,
};
/// LOINC 8462-4 Diastolic Blood Pressure, mm[Hg].
pub const DIASTOLIC_BP: LoincCode = LoincCode {
    code: "8462-4",
    display: "Diastolic Blood Pressure",
    unit: "mm[Hg]",
    category: "vital-signs",
    profile: None,
};
/// LOINC 8867-4 Heart rate, /min.
pub const HEART_RATE: LoincCode = LoincCode {
    code: "8867-4",
    display: "Heart rate",
    unit: "/min",
    category: "vital-signs",
    profile: Some("http://hl7.org/fhir/StructureDefinition/heartrate"),
};
/// LOINC 4548-4 Hemoglobin A1c/Hemoglobin.total in Blood, **%**.
pub const HBA1C: LoincCode = LoincCode {
    code: "4548-4",
    display: "Hemoglobin A1c/Hemoglobin.total in Blood",
    unit: "%",
    category: "laboratory",
    profile: None,
};
/// LOINC 2339-0 Glucose (in blood), mg/dL.
pub const GLUCOSE: LoincCode = LoincCode {
    code: "2339-0",
    display: "Glucose",
    unit: "mg/dL",
    category: "laboratory",
    profile: None,
};

/// HbA1c in percent (NGSP) to mmol/mol (IFCC): 10.929 × (% − 2.15).
pub fn hba1c_percent_to_mmol_mol(percent: f64) -> f64 {
    10.929 * (percent - 2.15)
}

/// One measured value, in the unit of its LOINC code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Measurement {
    /// Body height in cm (LOINC 8302-2).
    BodyHeight(f64),
    /// Body weight in kg (LOINC 29463-7).
    BodyWeight(f64),
    /// Body mass index in kg/m2 (LOINC 39156-5).
    BodyMassIndex(f64),
    /// Blood pressure panel (LOINC 85354-9), both in mm[Hg].
    BloodPressure {
        /// Systolic pressure (LOINC 8480-6).
        systolic: f64,
        /// Diastolic pressure (LOINC 8462-4).
        diastolic: f64,
    },
    /// Heart rate in /min (LOINC 8867-4).
    HeartRate(f64),
    /// HbA1c in % (LOINC 4548-4).
    HbA1c(f64),
    /// Glucose in mg/dL (LOINC 2339-0).
    Glucose(f64),
}

impl Measurement {
    /// The observation's code (the panel code for blood pressure).
    pub fn code(&self) -> &'static LoincCode {
        match self {
            Measurement::BodyHeight(_) => &BODY_HEIGHT,
            Measurement::BodyWeight(_) => &BODY_WEIGHT,
            Measurement::BodyMassIndex(_) => &BODY_MASS_INDEX,
            Measurement::BloodPressure { .. } => &BLOOD_PRESSURE,
            Measurement::HeartRate(_) => &HEART_RATE,
            Measurement::HbA1c(_) => &HBA1C,
            Measurement::Glucose(_) => &GLUCOSE,
        }
    }

    /// The single value, or `None` for the blood-pressure panel.
    pub fn value(&self) -> Option<f64> {
        match *self {
            Measurement::BodyHeight(v)
            | Measurement::BodyWeight(v)
            | Measurement::BodyMassIndex(v)
            | Measurement::HeartRate(v)
            | Measurement::HbA1c(v)
            | Measurement::Glucose(v) => Some(v),
            Measurement::BloodPressure { .. } => None,
        }
    }

    /// The scalar parts with their codes: the value itself, or for blood
    /// pressure the diastolic then the systolic component (Synthea's order).
    /// A Synthea CSV writes one row per part.
    pub fn parts(&self) -> impl Iterator<Item = (&'static LoincCode, f64)> {
        let parts = match *self {
            Measurement::BloodPressure {
                systolic,
                diastolic,
            } => [
                Some((&DIASTOLIC_BP, diastolic)),
                Some((&SYSTOLIC_BP, systolic)),
            ],
            other => [other.value().map(|v| (other.code(), v)), None],
        };
        parts.into_iter().flatten()
    }
}

/// A condition the generator can diagnose, with its SNOMED CT code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionKind {
    /// 44054006 Diabetes mellitus type 2 (disorder).
    Type2Diabetes,
    /// 59621000 Essential hypertension (disorder).
    Hypertension,
    /// 55822004 Hyperlipidemia (disorder).
    Hyperlipidemia,
    /// 15777000 Prediabetes (HbA1c 42–47 mmol/mol, 6.0–6.4 %).
    Prediabetes,
    /// 162864005 Body mass index 30+ - obesity (finding).
    Obesity,
}

impl ConditionKind {
    /// The SNOMED CT concept id.
    pub fn snomed(self) -> &'static str {
        match self {
            ConditionKind::Type2Diabetes => "44054006",
            ConditionKind::Hypertension => "59621000",
            ConditionKind::Hyperlipidemia => "55822004",
            ConditionKind::Prediabetes => "15777000",
            ConditionKind::Obesity => "162864005",
        }
    }

    /// The display text.
    pub fn display(self) -> &'static str {
        match self {
            ConditionKind::Type2Diabetes => "Diabetes mellitus type 2 (disorder)",
            ConditionKind::Hypertension => "Essential hypertension (disorder)",
            ConditionKind::Hyperlipidemia => "Hyperlipidemia (disorder)",
            ConditionKind::Prediabetes => "Prediabetes",
            ConditionKind::Obesity => "Body mass index 30+ - obesity (finding)",
        }
    }
}

/// A medication the generator can prescribe, with its RxNorm code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MedicationKind {
    /// 860975 metformin 500 mg extended release (first-line for T2D).
    Metformin,
    /// 106892 human insulin 70/30 (Humulin), added for poorly controlled T2D.
    Insulin,
    /// 314076 lisinopril 10 mg.
    Lisinopril,
    /// 197361 amlodipine 5 mg.
    Amlodipine,
    /// 310798 hydrochlorothiazide 25 mg.
    Hydrochlorothiazide,
    /// 314231 simvastatin 10 mg.
    Simvastatin,
    /// 259255 atorvastatin 80 mg.
    Atorvastatin,
}

impl MedicationKind {
    /// The RxNorm code.
    pub fn rxnorm(self) -> &'static str {
        match self {
            MedicationKind::Metformin => "860975",
            MedicationKind::Insulin => "106892",
            MedicationKind::Lisinopril => "314076",
            MedicationKind::Amlodipine => "197361",
            MedicationKind::Hydrochlorothiazide => "310798",
            MedicationKind::Simvastatin => "314231",
            MedicationKind::Atorvastatin => "259255",
        }
    }

    /// The RxNorm display text as Synthea emits it.
    pub fn display(self) -> &'static str {
        match self {
            MedicationKind::Metformin => {
                "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"
            }
            MedicationKind::Insulin => {
                "insulin isophane, human 70 UNT/ML / insulin, regular, human 30 UNT/ML Injectable Suspension [Humulin]"
            }
            MedicationKind::Lisinopril => "lisinopril 10 MG Oral Tablet",
            MedicationKind::Amlodipine => "Amlodipine 5 MG Oral Tablet",
            MedicationKind::Hydrochlorothiazide => "Hydrochlorothiazide 25 MG Oral Tablet",
            MedicationKind::Simvastatin => "Simvastatin 10 MG Oral Tablet",
            MedicationKind::Atorvastatin => "Atorvastatin 80 MG Oral Tablet",
        }
    }

    /// Cost of one (monthly) dispense, in the same nominal currency units as
    /// Synthea's BASE_COST column.
    pub fn base_cost(self) -> f64 {
        match self {
            MedicationKind::Metformin => 6.17,
            MedicationKind::Insulin => 145.32,
            MedicationKind::Lisinopril => 3.91,
            MedicationKind::Amlodipine => 4.48,
            MedicationKind::Hydrochlorothiazide => 2.63,
            MedicationKind::Simvastatin => 5.27,
            MedicationKind::Atorvastatin => 9.84,
        }
    }
}

/// The type of an encounter, coded in SNOMED CT as Synthea does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncounterKind {
    /// 185349003 Encounter for check up (procedure): a routine GP visit with
    /// vital signs and possibly blood tests.
    CheckUp,
    /// 185345009 Encounter for symptom (procedure): the visit at which a
    /// chronic condition was diagnosed.
    Diagnosis,
}

impl EncounterKind {
    /// The SNOMED CT code.
    pub fn snomed(self) -> &'static str {
        match self {
            EncounterKind::CheckUp => "185349003",
            EncounterKind::Diagnosis => "185345009",
        }
    }

    /// The display text.
    pub fn display(self) -> &'static str {
        match self {
            EncounterKind::CheckUp => "Encounter for check up (procedure)",
            EncounterKind::Diagnosis => "Encounter for symptom (procedure)",
        }
    }
}
