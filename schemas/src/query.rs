//! Researchers' aggregate query specs, their canonical hash, and stewards' signed approvals.
//!
//! A spec is written in TOML (see `examples/t2d-query.toml`). Its canonical form is JSON with
//! object keys sorted bytewise, no whitespace, strings escaped as `serde_json` does, numbers as
//! `serde_json` writes them (integers without a fraction, `f64` in shortest round-trip form with
//! at least one fractional digit). The query hash is
//! `SHA-256("datadonor/v1/query" 0x00 || canonical JSON)`. An approval names that hash; any
//! change to the spec changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::signing::{Context, PublicKey, SignatureError, Signed, SignedObject, SigningKey};
use crate::study::{FieldType, Role, StudyDefinition, StudyId, PERIOD_COLUMN};
use crate::time::UnixSeconds;
use crate::wire::{hex16, hex32, sha256};

/// Largest spec accepted.
pub const MAX_SPEC_LEN: usize = 64 * 1024;
/// Domain separation of the query hash.
pub const QUERY_HASH_PREFIX: &[u8] = b"datadonor/v1/query\0";

/// Errors in a spec or approval.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// TOML parse error (message carries line, column and key).
    #[error("{0}")]
    Toml(String),
    /// The spec asks for something refused; the message says why.
    #[error("refused: {0}")]
    Refused(String),
    /// The spec is inconsistent with the study.
    #[error("invalid query: {0}")]
    Invalid(String),
    /// Approval signature.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The approval does not cover this run.
    #[error("approval does not cover this run: {0}")]
    NotApproved(String),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    /// A boolean (flag fields).
    Bool(bool),
    /// A number (measures).
    Number(f64),
    /// A string (categories, periods).
    Text(String),
}

/// A row filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// All must hold.
    All(Vec<Filter>),
    /// At least one must hold.
    Any(Vec<Filter>),
    /// Negation.
    Not(Box<Filter>),
    /// `field op value`.
    Cmp {
        /// Field.
        field: String,
        /// Operator.
        op: CmpOp,
        /// Value.
        value: Literal,
    },
    /// `field ∈ values`.
    In {
        /// Field.
        field: String,
        /// Values.
        values: Vec<String>,
    },
}

/// Aggregations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureOp {
    /// Distinct donors.
    Donors,
    /// Rows.
    Rows,
    /// Sum of a field.
    Sum,
    /// Mean of a field.
    Mean,
    /// Sample standard deviation of a field.
    Std,
    /// A quantile of a field (`q` in (0, 1)).
    Quantile,
    /// Refused: publishes one donor's value.
    Min,
    /// Refused: publishes one donor's value.
    Max,
}

/// One output measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// Aggregation.
    pub op: MeasureOp,
    /// Field aggregated (not for `donors`/`rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Quantile level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<f64>,
}

impl Measure {
    /// Output column name, e.g. `mean_hba1c`, `q0.5_bmi`, `donors`.
    pub fn column_name(&self) -> String {
        let op = match self.op {
            MeasureOp::Donors => return "donors".into(),
            MeasureOp::Rows => return "rows".into(),
            MeasureOp::Sum => "sum".to_string(),
            MeasureOp::Mean => "mean".to_string(),
            MeasureOp::Std => "std".to_string(),
            MeasureOp::Quantile => format!("q{}", self.q.unwrap_or(0.5)),
            MeasureOp::Min => "min".to_string(),
            MeasureOp::Max => "max".to_string(),
        };
        format!("{op}_{}", self.field.as_deref().unwrap_or(""))
    }
}

/// How much one donor may contribute to a measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contribution {
    /// Every row counts.
    #[default]
    AllRows,
    /// Each donor's rows in a cell are first averaged into one value.
    DonorMean,
}

/// A researcher's aggregate query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Study queried.
    pub study: StudyId,
    /// Purpose the query serves (must be one of the study's; donors must have consented to it).
    pub purpose: String,
    /// Researcher identity.
    pub researcher: String,
    /// Title for outputs.
    #[serde(default)]
    pub title: String,
    /// Requested minimum donors per cell (the effective k is the larger of this and the study's).
    #[serde(default)]
    pub k: u32,
    /// Dimensions grouped by (study dimensions or `period`).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Row filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Measures.
    pub measures: Vec<Measure>,
    /// Per-donor contribution bound.
    #[serde(default)]
    pub contribution: Contribution,
    /// Also publish margins (a total row per dimension and a grand total).
    #[serde(default)]
    pub totals: bool,
}

impl QuerySpec {
    /// Parse TOML (errors carry line, column and key).
    pub fn from_toml(text: &str) -> Result<Self, QueryError> {
        if text.len() > MAX_SPEC_LEN {
            return Err(QueryError::Invalid(format!(
                "spec is {} bytes; the limit is {MAX_SPEC_LEN}",
                text.len()
            )));
        }
        toml::from_str(text).map_err(|e| QueryError::Toml(e.to_string()))
    }

    /// The canonical JSON bytes.
    pub fn canonical_json(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        out
    }

    /// The query hash an approval binds to.
    pub fn hash(&self) -> [u8; 32] {
        let mut b = QUERY_HASH_PREFIX.to_vec();
        b.extend_from_slice(&self.canonical_json());
        sha256(&b)
    }

    /// The effective k.
    pub fn effective_k(&self, study: &StudyDefinition) -> u32 {
        self.k.max(study.min_k)
    }

    /// Check the spec against its study; refuses disclosive requests with a reason.
    pub fn validate(&self, study: &StudyDefinition) -> Result<(), QueryError> {
        self.check(study).map_err(|e| e.error)
    }

    /// [`Self::validate`], naming the spec key the error concerns (see [`SpecError`]).
    pub fn check(&self, study: &StudyDefinition) -> Result<(), SpecError> {
        let at = |key: &str| {
            let key = key.to_string();
            move |error| SpecError { key, error }
        };
        if self.study != study.id {
            return Err(at("study")(QueryError::Invalid(format!(
                "spec is for study {}, not {}",
                self.study, study.id
            ))));
        }
        if !study.purpose_codes().any(|p| p == self.purpose) {
            return Err(at("purpose")(QueryError::Invalid(format!(
                "purpose {:?} is not one of the study's",
                self.purpose
            ))));
        }
        if self.researcher.trim().is_empty() {
            return Err(at("researcher")(QueryError::Invalid(
                "researcher is required".into(),
            )));
        }
        if self.measures.is_empty() {
            return Err(at("measures")(QueryError::Invalid(
                "at least one measure is required".into(),
            )));
        }
        if self.group_by.len() > MAX_GROUP_BY {
            return Err(at("group_by")(QueryError::Refused(format!(
                "at most {MAX_GROUP_BY} group-by dimensions"
            ))));
        }
        for (i, g) in self.group_by.iter().enumerate() {
            let twice = self.group_by.iter().skip(i + 1).any(|h| h == g);
            check_group_by(g, twice, study).map_err(at(&format!("group_by[{i}]")))?;
        }
        for (i, m) in self.measures.iter().enumerate() {
            check_measure(m, study).map_err(at(&format!("measures[{i}]")))?;
        }
        if let Some(f) = &self.filter {
            validate_filter(f, study, 0).map_err(at("filter"))?;
        }
        Ok(())
    }
}

/// A spec validation error with the key it concerns: a top-level key of the spec (`study`,
/// `purpose`, `measures`, `filter`, ...) or an element of an array (`group_by[1]`, the third
/// `[[measures]]` table as `measures[2]`). [`spec_key_line`] finds its line in the TOML text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {error}")]
pub struct SpecError {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub error: QueryError,
}

/// The 1-based line of the TOML text where `key` (as in [`SpecError::key`]) is written, if the
/// text parses and holds it.
pub fn spec_key_line(text: &str, key: &str) -> Option<usize> {
    let (name, index) = match key.strip_suffix(']').and_then(|k| k.split_once('[')) {
        Some((name, i)) => (name, Some(i.parse::<usize>().ok()?)),
        None => (key, None),
    };
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let (k, item) = doc.as_table().get_key_value(name)?;
    let span = match (index, item) {
        (Some(i), toml_edit::Item::Value(toml_edit::Value::Array(a))) => a.get(i)?.span(),
        (Some(i), toml_edit::Item::ArrayOfTables(t)) => t.get(i)?.span(),
        _ => k.span().or_else(|| item.span()),
    }?;
    Some(text.get(..span.start)?.matches('\n').count() + 1)
}

fn check_group_by(g: &str, twice: bool, study: &StudyDefinition) -> Result<(), QueryError> {
    if g == crate::study::DONOR_COLUMN {
        return Err(QueryError::Refused(
            "grouping by pseudonym would publish per-donor rows".into(),
        ));
    }
    if twice {
        return Err(QueryError::Invalid(format!("group_by names {g:?} twice")));
    }
    if g == PERIOD_COLUMN {
        return Ok(());
    }
    match study.field(g) {
        Some(f) if f.role == Role::Dimension => Ok(()),
        Some(_) => Err(QueryError::Refused(format!(
            "{g:?} is a measure; only dimensions can be grouped by"
        ))),
        None => Err(QueryError::Invalid(format!(
            "group_by: no field {g:?} in the study"
        ))),
    }
}

fn check_measure(m: &Measure, study: &StudyDefinition) -> Result<(), QueryError> {
    match m.op {
        MeasureOp::Min | MeasureOp::Max => Err(QueryError::Refused(
            format!(
                "{:?} is refused: an extreme value is one donor's row-level value",
                m.op
            )
            .to_lowercase(),
        )),
        MeasureOp::Donors | MeasureOp::Rows => {
            if m.field.is_some() || m.q.is_some() {
                return Err(QueryError::Invalid(format!(
                    "{:?} takes no field and no q",
                    m.op
                )));
            }
            Ok(())
        }
        MeasureOp::Sum | MeasureOp::Mean | MeasureOp::Std | MeasureOp::Quantile => {
            let name = m
                .field
                .as_deref()
                .ok_or_else(|| QueryError::Invalid(format!("{:?} needs a field", m.op)))?;
            match study.field(name).map(|f| (f.role, f.field_type())) {
                Some((Role::Measure, FieldType::Number { .. })) => {}
                Some(_) => {
                    return Err(QueryError::Invalid(format!(
                        "{name:?} is not a numeric measure"
                    )))
                }
                None => {
                    return Err(QueryError::Invalid(format!(
                        "measure: no field {name:?} in the study"
                    )))
                }
            }
            match (m.op, m.q) {
                (MeasureOp::Quantile, Some(q)) if q > 0.0 && q < 1.0 => Ok(()),
                (MeasureOp::Quantile, _) => {
                    Err(QueryError::Invalid("quantile needs q in (0, 1)".into()))
                }
                (_, Some(_)) => Err(QueryError::Invalid("only quantile takes q".into())),
                _ => Ok(()),
            }
        }
    }
}

/// Distinct group-by dimensions a spec may name (2^d tables with totals).
pub const MAX_GROUP_BY: usize = 4;

/// A period literal must be a period of the study's granularity (`2024-03` for months, `2024-W09` for
/// weeks, `2024-03-01` for days): periods compare bytewise, so `"2024-3"` would silently compare
/// after every month from `2024-30`.
fn check_period(study: &StudyDefinition, t: &str) -> Result<(), QueryError> {
    if study.period.is_valid_period(t) {
        Ok(())
    } else {
        Err(QueryError::Invalid(format!(
            "filter: {t:?} is not a {} period of this study (like {:?})",
            match study.period {
                crate::study::Granularity::Day => "day",
                crate::study::Granularity::Week => "week",
                crate::study::Granularity::Month => "month",
            },
            study.period.period_of(jiff::civil::date(2024, 3, 1))
        )))
    }
}

fn validate_filter(f: &Filter, study: &StudyDefinition, depth: usize) -> Result<(), QueryError> {
    if depth > 16 {
        return Err(QueryError::Invalid("filter nests deeper than 16".into()));
    }
    match f {
        Filter::All(v) | Filter::Any(v) => v
            .iter()
            .try_for_each(|g| validate_filter(g, study, depth + 1)),
        Filter::Not(g) => validate_filter(g, study, depth + 1),
        Filter::Cmp { field, value, op } => {
            if field == PERIOD_COLUMN {
                return match value {
                    Literal::Text(t) => check_period(study, t),
                    _ => Err(QueryError::Invalid(
                        "period compares with text like \"2024-03\"".into(),
                    )),
                };
            }
            let ft = study.field(field).map(|s| s.field_type()).ok_or_else(|| {
                QueryError::Invalid(format!("filter: no field {field:?} in the study"))
            })?;
            match (ft, value) {
                (FieldType::Number { .. }, Literal::Number(n)) if n.is_finite() => Ok(()),
                (FieldType::Flag, Literal::Bool(_)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                    Ok(())
                }
                (FieldType::Category(allowed), Literal::Text(t))
                    if matches!(op, CmpOp::Eq | CmpOp::Ne) =>
                {
                    if allowed.iter().any(|a| a == t) {
                        Ok(())
                    } else {
                        Err(QueryError::Invalid(format!(
                            "filter: {t:?} is not a value of {field}"
                        )))
                    }
                }
                _ => Err(QueryError::Invalid(format!(
                    "filter on {field:?}: operator or value of the wrong type"
                ))),
            }
        }
        Filter::In { field, values } => {
            if field == PERIOD_COLUMN {
                return values.iter().try_for_each(|t| check_period(study, t));
            }
            match study.field(field).map(|s| s.field_type()) {
                Some(FieldType::Category(allowed)) => {
                    match values.iter().find(|v| !allowed.contains(v)) {
                        Some(v) => Err(QueryError::Invalid(format!(
                            "filter: {v:?} is not a value of {field}"
                        ))),
                        None => Ok(()),
                    }
                }
                Some(_) => Err(QueryError::Invalid(format!(
                    "filter: `in` needs a category field, {field:?} is not"
                ))),
                None => Err(QueryError::Invalid(format!(
                    "filter: no field {field:?} in the study"
                ))),
            }
        }
    }
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push(b'{');
            for (i, (k, val)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                write_canonical(val, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(&serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// A steward's approval of one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryApproval {
    /// Format version.
    pub format: u32,
    /// Random approval id.
    #[serde(with = "hex16")]
    pub approval_id: [u8; 16],
    /// The spec's query hash.
    #[serde(with = "hex32")]
    pub query_sha256: [u8; 32],
    /// Study.
    pub study_id: StudyId,
    /// Purpose.
    pub purpose: String,
    /// Researcher allowed to run it.
    pub researcher: String,
    /// Valid from.
    pub not_before: UnixSeconds,
    /// Valid until (exclusive).
    pub not_after: UnixSeconds,
    /// Runs allowed.
    pub max_runs: u32,
    /// What one run may spend of the study's and the researcher's privacy budgets. The query
    /// service refuses an approval without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacySpend>,
}

impl QueryApproval {
    /// Sign with a steward key.
    pub fn sign(&self, key: &SigningKey) -> SignedObject {
        SignedObject::sign(Context::QueryApproval, self, key)
    }
}

/// Verify an approval for running `spec` at `now`, given the trusted approver keys and the
/// number of runs already logged under it.
pub fn check_approval(
    approval: &SignedObject,
    spec: &QuerySpec,
    trusted: &[PublicKey],
    now: UnixSeconds,
    runs_so_far: u64,
) -> Result<Signed<QueryApproval>, QueryError> {
    let signed: Signed<QueryApproval> = approval.open(Context::QueryApproval, "query approval")?;
    if !trusted.contains(&signed.signer) {
        return Err(QueryError::NotApproved(
            "approver key is not a trusted steward key".into(),
        ));
    }
    let a = &signed.body;
    if a.query_sha256 != spec.hash() {
        return Err(QueryError::NotApproved(
            "the spec differs from the one approved (query hash mismatch)".into(),
        ));
    }
    if a.study_id != spec.study {
        return Err(QueryError::NotApproved("study differs".into()));
    }
    if a.purpose != spec.purpose {
        return Err(QueryError::NotApproved(format!(
            "approval is for purpose {:?}",
            a.purpose
        )));
    }
    if a.researcher != spec.researcher {
        return Err(QueryError::NotApproved(format!(
            "approval is for researcher {:?}",
            a.researcher
        )));
    }
    if now < a.not_before {
        return Err(QueryError::NotApproved("approval is not valid yet".into()));
    }
    if now >= a.not_after {
        return Err(QueryError::NotApproved("approval has expired".into()));
    }
    if runs_so_far >= u64::from(a.max_runs) {
        return Err(QueryError::NotApproved(if a.max_runs == 1 {
            "approval allows 1 run, already used".into()
        } else {
            format!("approval allows {} runs, all used", a.max_runs)
        }));
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = include_str!("../../examples/t2d-query.toml");
    const STUDY: &str = include_str!("../../examples/t2d-study.toml");

    fn located(text: &str) -> (String, Option<usize>) {
        let study = StudyDefinition::from_toml(STUDY).expect("example study");
        let spec = QuerySpec::from_toml(text).expect("parses");
        let e = spec.check(&study).expect_err("refused");
        assert_eq!(spec.validate(&study), Err(e.error.clone()));
        let line = spec_key_line(text, &e.key);
        (e.key, line)
    }

    #[test]
    fn a_validation_error_names_its_key_and_line() {
        let study = StudyDefinition::from_toml(STUDY).expect("example study");
        let spec = QuerySpec::from_toml(SPEC).expect("example spec");
        assert_eq!(spec.check(&study), Ok(()));
        let cases = [
            (SPEC.replace("\"t2d\"]", "\"hba1c\"]"), "group_by[1]", 7),
            (
                SPEC.replace("field = \"systolic\"", "field = \"weight\""),
                "measures[3]",
                26,
            ),
            (SPEC.replace("\"30-39\"", "\"30-40\""), "filter", 11),
            (SPEC.replace("t2d-epidemiology", "marketing"), "purpose", 3),
            // An array written over several lines: the element's own line.
            (
                SPEC.replace(
                    "group_by = [\"region\", \"t2d\"]",
                    "group_by = [\n  \"region\",\n  \"donor\",\n]",
                ),
                "group_by[1]",
                9,
            ),
            // An inline filter table.
            (
                SPEC.replace(
                    "[filter]\nnot = { in = { field = \"age_band\", values = [\"18-19\", \"20-29\", \"30-39\"] } }",
                    "",
                )
                .replace(
                    "k = 5",
                    "k = 5\nfilter = { cmp = { field = \"bmi\", op = \"eq\", value = \"high\" } }",
                ),
                "filter",
                7,
            ),
        ];
        for (text, key, line) in cases {
            assert_eq!(located(&text), (key.to_string(), Some(line)), "{text}");
        }
    }

    #[test]
    fn a_key_the_text_does_not_hold_has_no_line() {
        assert_eq!(spec_key_line(SPEC, "group_by[9]"), None);
        assert_eq!(spec_key_line(SPEC, "measures[4]"), None);
        assert_eq!(spec_key_line(SPEC, "epsilon"), None);
        assert_eq!(spec_key_line(SPEC, "group_by[x]"), None);
        assert_eq!(spec_key_line("k = ", "k"), None);
        assert_eq!(spec_key_line(SPEC, "measures[0]"), Some(14));
        assert_eq!(spec_key_line(SPEC, "study"), Some(2));
    }
}
