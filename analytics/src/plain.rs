//! The example query (`examples/t2d-query.toml`) written plainly as a polars lazy query over
//! plaintext rows, as a researcher would write it without the steward's engine: rows donated
//! under the consent records that cover the purpose, adults 40 and over, each donor's mean per
//! cell, then per cell the donors, the mean HbA1c, the median BMI and the mean systolic
//! pressure of those donor means, for the cell and every margin.
//!
//! No disclosure control and no noise. The benchmark compares the engine's speed with it, and
//! `tests/plain_query.rs` checks that every value the engine's exact run publishes equals the
//! value this query computes for the same cell.

use std::collections::HashSet;

use datadonor_schemas::study::{CONSENT_COLUMN, DONOR_COLUMN};
use polars::prelude::*;

/// The groupings of [`example_query`]'s frames, in order: the cells (region × t2d), the region
/// margin, the t2d margin and the grand total.
pub const GROUPINGS: [&[&str]; 4] = [&["region", "t2d"], &["region"], &["t2d"], &[]];

/// Age bands the example query leaves out (under 40).
pub const YOUNGER_BANDS: [&str; 3] = ["18-19", "20-29", "30-39"];

/// The example query over `rows` (the study's batch columns), counting only rows whose
/// `consent` column is one of the `allowed` consent records. One frame per entry of
/// [`GROUPINGS`], in that order, each with the grouping's columns (as stored: `t2d` stays a
/// boolean) and the columns `donors` (`u32`), `mean_hba1c`, `q0.5_bmi` and `mean_systolic`
/// (`f64`, null where no donor has a value), named as the engine names the spec's measures.
///
/// The four plans share the scan and are collected together.
pub fn example_query(rows: LazyFrame, allowed: &HashSet<[u8; 16]>) -> PolarsResult<Vec<DataFrame>> {
    let mut allowed: Vec<String> = allowed.iter().map(hex::encode).collect();
    allowed.sort_unstable();
    let lf = rows.filter(
        col(CONSENT_COLUMN)
            .is_in(
                lit(Series::new("allowed".into(), allowed)).implode(false),
                false,
            )
            .and(
                col("age_band")
                    .is_in(
                        lit(Series::new("younger".into(), YOUNGER_BANDS)).implode(false),
                        false,
                    )
                    .not(),
            ),
    );
    let mut plans = Vec::with_capacity(GROUPINGS.len());
    for dims in GROUPINGS {
        let mut by_donor: Vec<Expr> = dims.iter().map(|d| col(*d)).collect();
        by_donor.push(col(DONOR_COLUMN));
        let per_donor = lf.clone().group_by(by_donor).agg([
            col("hba1c").mean(),
            col("bmi").mean(),
            col("systolic").mean(),
        ]);
        let cells = [
            len().alias("donors"),
            col("hba1c").mean().alias("mean_hba1c"),
            col("bmi")
                .quantile(lit(0.5), QuantileMethod::Linear)
                .alias("q0.5_bmi"),
            col("systolic").mean().alias("mean_systolic"),
        ];
        let plan = if dims.is_empty() {
            per_donor.select(cells)
        } else {
            per_donor
                .group_by(dims.iter().map(|d| col(*d)).collect::<Vec<_>>())
                .agg(cells)
        };
        plans.push(plan.logical_plan);
    }
    LazyFrame::collect_all_with_engine(plans, Engine::Auto, lf.get_current_optimizations())
}
