//! Differential privacy in the protocol: a study's privacy policy and budgets, what an approval
//! lets one run spend, the accounting of a run against the budgets, the researcher's signed
//! request to the steward's query service, and the released table it answers with.
//!
//! Accounting is *basic (sequential) composition*: the privacy loss of several releases is
//! bounded by the sums of their `(ε, δ)`. A study's budget is charged with every run on it; a
//! researcher's budget with every run of theirs. A run is refused when either sum would exceed
//! its total.
//!
//! The mechanisms themselves (and how a run's `(ε, δ)` is split among them) are the query
//! service's; `DISCLOSURE.md` describes them.

use serde::{Deserialize, Serialize};

use crate::signing::SignedObject;
use crate::study::StudyId;
use crate::time::UnixSeconds;
use crate::wire::{hex16, hex32, parse_json};

/// Relative slack when comparing sums of floating-point budgets (so that ten runs of 0.1 fit
/// a budget of 1.0).
pub const BUDGET_SLACK: f64 = 1e-9;
/// Largest request body the query service accepts.
pub const MAX_REQUEST_LEN: usize = 128 * 1024;
/// How far a request's time may be from the service's clock, in seconds.
pub const REQUEST_SKEW_SECS: i64 = 300;

/// Errors of privacy policies, spends and requests.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// A policy or spend is out of range; the message says which value.
    #[error("{0}")]
    Invalid(String),
    /// A run would exceed a budget.
    #[error("{0}")]
    OverBudget(String),
}

/// A study's differential-privacy policy: the total budgets and the contribution bounds every
/// run applies before aggregating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyPolicy {
    /// Total ε of every run on the study, together.
    pub epsilon: f64,
    /// Total δ of every run on the study, together.
    pub delta: f64,
    /// Total ε of one researcher's runs.
    pub researcher_epsilon: f64,
    /// Total δ of one researcher's runs.
    pub researcher_delta: f64,
    /// At most this many rows of one donor count in one cell (L).
    pub max_rows_per_cell: u32,
    /// At most this many cells of one table count one donor (C); the donor's other cells are
    /// dropped, the first cells in key order kept.
    pub max_cells_per_donor: u32,
}

impl PrivacyPolicy {
    /// Check ranges: budgets positive and finite, δ below 1e-3, per-researcher budgets within
    /// the study's, bounds from 1 to 1000.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        let bad = |m: &str| Err(PrivacyError::Invalid(format!("privacy: {m}")));
        for (name, v) in [
            ("epsilon", self.epsilon),
            ("researcher_epsilon", self.researcher_epsilon),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                return bad(&format!("{name} must be in (0, 100]"));
            }
        }
        for (name, v) in [
            ("delta", self.delta),
            ("researcher_delta", self.researcher_delta),
        ] {
            if !(v.is_finite() && (0.0..=1e-3).contains(&v)) {
                return bad(&format!("{name} must be in [0, 0.001]"));
            }
        }
        if self.researcher_epsilon > self.epsilon || self.researcher_delta > self.delta {
            return bad("a researcher's budget cannot exceed the study's");
        }
        for (name, v) in [
            ("max_rows_per_cell", self.max_rows_per_cell),
            ("max_cells_per_donor", self.max_cells_per_donor),
        ] {
            if !(1..=1000).contains(&v) {
                return bad(&format!("{name} must be from 1 to 1000"));
            }
        }
        Ok(())
    }
}

/// A privacy loss `(ε, δ)`: what an approval lets one run spend, or what runs have spent.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpend {
    /// ε.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
}

impl PrivacySpend {
    /// A run's spend: ε in (0, 100], δ in [0, 1e-3], both finite.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0 && self.epsilon <= 100.0) {
            return Err(PrivacyError::Invalid(
                "a run's epsilon must be in (0, 100]".into(),
            ));
        }
        if !(self.delta.is_finite() && (0.0..=1e-3).contains(&self.delta)) {
            return Err(PrivacyError::Invalid(
                "a run's delta must be in [0, 0.001]".into(),
            ));
        }
        Ok(())
    }

    /// The sum (basic composition).
    pub fn plus(self, other: PrivacySpend) -> PrivacySpend {
        PrivacySpend {
            epsilon: self.epsilon + other.epsilon,
            delta: self.delta + other.delta,
        }
    }
}

fn fits(spent: f64, run: f64, total: f64) -> bool {
    spent + run <= total * (1.0 + BUDGET_SLACK) + f64::MIN_POSITIVE
}

/// What a logged run spent and what was left of both budgets after it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPrivacy {
    /// ε of this run.
    pub epsilon: f64,
    /// δ of this run.
    pub delta: f64,
    /// The study's ε left after this run.
    pub study_epsilon_left: f64,
    /// The study's δ left after this run.
    pub study_delta_left: f64,
    /// The researcher's ε left after this run.
    pub researcher_epsilon_left: f64,
    /// The researcher's δ left after this run.
    pub researcher_delta_left: f64,
}

/// Charge `run` to a study's and a researcher's budgets, given what each has spent so far; the
/// amounts left after it, or why it is refused.
pub fn charge(
    policy: &PrivacyPolicy,
    study_spent: PrivacySpend,
    researcher_spent: PrivacySpend,
    run: PrivacySpend,
) -> Result<RunPrivacy, PrivacyError> {
    run.validate()?;
    let over = |whose: &str, what: &str, spent: f64, total: f64| {
        PrivacyError::OverBudget(format!(
            "this run's {what} would exceed the {whose} budget: {spent} of {total} spent, the run needs {}",
            if what == "epsilon" { run.epsilon } else { run.delta }
        ))
    };
    if !fits(study_spent.epsilon, run.epsilon, policy.epsilon) {
        return Err(over(
            "study's",
            "epsilon",
            study_spent.epsilon,
            policy.epsilon,
        ));
    }
    if !fits(study_spent.delta, run.delta, policy.delta) {
        return Err(over("study's", "delta", study_spent.delta, policy.delta));
    }
    if !fits(
        researcher_spent.epsilon,
        run.epsilon,
        policy.researcher_epsilon,
    ) {
        return Err(over(
            "researcher's",
            "epsilon",
            researcher_spent.epsilon,
            policy.researcher_epsilon,
        ));
    }
    if !fits(researcher_spent.delta, run.delta, policy.researcher_delta) {
        return Err(over(
            "researcher's",
            "delta",
            researcher_spent.delta,
            policy.researcher_delta,
        ));
    }
    let left = |total: f64, spent: f64| (total - spent).max(0.0);
    Ok(RunPrivacy {
        epsilon: run.epsilon,
        delta: run.delta,
        study_epsilon_left: left(policy.epsilon, study_spent.epsilon + run.epsilon),
        study_delta_left: left(policy.delta, study_spent.delta + run.delta),
        researcher_epsilon_left: left(
            policy.researcher_epsilon,
            researcher_spent.epsilon + run.epsilon,
        ),
        researcher_delta_left: left(policy.researcher_delta, researcher_spent.delta + run.delta),
    })
}

/// A researcher's request to run an approved query, signed with their registered key
/// (context `query-request`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Format version.
    pub format: u32,
    /// Random request id: the service answers a replayed id with `409 replayed-request`.
    #[serde(with = "hex16")]
    pub request_id: [u8; 16],
    /// When the researcher signed it; the service refuses a request more than
    /// [`REQUEST_SKEW_SECS`] from its own clock.
    pub time: UnixSeconds,
    /// The query spec, as the TOML text the researcher wrote.
    pub spec_toml: String,
    /// The steward's signed approval of that spec.
    pub approval: SignedObject,
}

impl QueryRequest {
    /// Parse the JSON payload of a signed request.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::wire::WireError> {
        parse_json(bytes, "query request", MAX_REQUEST_LEN)
    }
}

/// One column of a released table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedColumn {
    /// Column name, e.g. `donors`, `mean_hba1c`, `q0.5_bmi`.
    pub name: String,
    /// Aggregation.
    pub op: crate::query::MeasureOp,
    /// Field aggregated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Quantile level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<f64>,
    /// The noise scale of the mechanism behind this column (Laplace `b`; for quantiles the
    /// scale of the exponential mechanism's scores).
    pub noise_scale: f64,
    /// The ε of this column's mechanism in one table.
    pub epsilon: f64,
    /// Decimal places to write the column's values with (counts: 0; a field's statistics: as
    /// the study declares for the field; absent: six significant digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u8>,
}

/// One released cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedRow {
    /// Dimension values (`null` = total over that dimension).
    pub key: Vec<Option<String>>,
    /// One value per column; `null` when suppressed or without data.
    pub values: Vec<Option<f64>>,
    /// Per column, the half-width of a 95 % interval for the noise added (`null` when the
    /// value is null or no closed form is given, as for quantiles).
    pub error95: Vec<Option<f64>>,
    /// Why the whole cell is suppressed (`few-donors`: its noisy donor count is below k).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
}

/// The table the query service releases: every value differentially private, the run's cost and
/// what is left of the budgets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedTable {
    /// Format version.
    pub format: u32,
    /// Study.
    pub study_id: StudyId,
    /// The spec's query hash.
    #[serde(with = "hex32")]
    pub query_sha256: [u8; 32],
    /// SHA-256 of the approval's payload.
    #[serde(with = "hex32")]
    pub approval_sha256: [u8; 32],
    /// Researcher.
    pub researcher: String,
    /// Purpose.
    pub purpose: String,
    /// Title from the spec.
    pub title: String,
    /// Effective k (a cell whose noisy donor count is below it is suppressed).
    pub k: u32,
    /// Dimension names.
    pub dimensions: Vec<String>,
    /// Columns (a `donors` column first).
    pub columns: Vec<ReleasedColumn>,
    /// Cells.
    pub rows: Vec<ReleasedRow>,
    /// The run's spend and the budgets left.
    pub privacy: RunPrivacy,
    /// The contribution bounds applied.
    pub bounds: ContributionBounds,
    /// Ledger index of the run's `query_run` entry.
    pub ledger_index: u64,
}

/// Contribution bounds applied in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContributionBounds {
    /// Rows of one donor in one cell (L).
    pub max_rows_per_cell: u32,
    /// Cells of one table per donor (C).
    pub max_cells_per_donor: u32,
    /// Tables released (1, or 2^d with margins).
    pub tables: u32,
}

impl ReleasedTable {
    /// Parse the service's JSON answer.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::wire::WireError> {
        parse_json(bytes, "released table", 64 << 20)
    }
    /// Cells published (not suppressed as a whole).
    pub fn cells_published(&self) -> u64 {
        self.rows.iter().filter(|r| r.suppressed.is_none()).count() as u64
    }
    /// Cells suppressed as a whole.
    pub fn cells_suppressed(&self) -> u64 {
        self.rows.iter().filter(|r| r.suppressed.is_some()).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PrivacyPolicy {
        PrivacyPolicy {
            epsilon: 1.0,
            delta: 1e-6,
            researcher_epsilon: 0.5,
            researcher_delta: 1e-6,
            max_rows_per_cell: 1,
            max_cells_per_donor: 2,
        }
    }

    #[test]
    fn ten_runs_of_a_tenth_fit_and_the_eleventh_is_refused() {
        let p = PrivacyPolicy {
            researcher_epsilon: 1.0,
            ..policy()
        };
        let run = PrivacySpend {
            epsilon: 0.1,
            delta: 1e-7,
        };
        let mut spent = PrivacySpend::default();
        for i in 0..10 {
            let r = charge(&p, spent, spent, run).unwrap_or_else(|e| panic!("run {i}: {e}"));
            spent = spent.plus(run);
            assert!((r.study_epsilon_left - (1.0 - spent.epsilon)).abs() < 1e-12);
        }
        let e = charge(&p, spent, spent, run).expect_err("over budget");
        assert!(matches!(e, PrivacyError::OverBudget(_)), "{e}");
    }

    #[test]
    fn the_researcher_budget_binds_before_the_study_budget() {
        let run = PrivacySpend {
            epsilon: 0.3,
            delta: 0.0,
        };
        let spent = PrivacySpend {
            epsilon: 0.3,
            delta: 0.0,
        };
        let e = charge(&policy(), spent, spent, run).expect_err("researcher over");
        assert!(e.to_string().contains("researcher's"), "{e}");
        let r = charge(&policy(), spent, PrivacySpend::default(), run).expect("fits");
        assert!((r.researcher_epsilon_left - 0.2).abs() < 1e-12);
        assert!((r.study_epsilon_left - 0.4).abs() < 1e-12);
    }

    #[test]
    fn out_of_range_policies_and_spends_are_refused() {
        assert_eq!(policy().validate(), Ok(()));
        for bad in [
            PrivacyPolicy {
                epsilon: 0.0,
                ..policy()
            },
            PrivacyPolicy {
                epsilon: f64::NAN,
                ..policy()
            },
            PrivacyPolicy {
                delta: 0.5,
                ..policy()
            },
            PrivacyPolicy {
                researcher_epsilon: 2.0,
                ..policy()
            },
            PrivacyPolicy {
                max_cells_per_donor: 0,
                ..policy()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        for bad in [(0.0, 0.0), (-1.0, 0.0), (f64::INFINITY, 0.0), (1.0, -1e-9)] {
            let s = PrivacySpend {
                epsilon: bad.0,
                delta: bad.1,
            };
            assert!(s.validate().is_err(), "{s:?}");
        }
    }
}
