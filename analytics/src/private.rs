//! The differentially private release of a run: contribution bounding, then OpenDP's mechanisms
//! over the bounded cell–donor partials (`DISCLOSURE.md`, "Differential privacy").
//!
//! A run releases one *table* per combination of grouped and totalled dimensions (one table,
//! or 2^d with margins). Its `(ε, δ)` is split evenly: `δ/T` and `ε/T` per table, and within a
//! table `ε` evenly over its mechanisms: the donor counts with a noisy threshold on the cell keys
//! (one mechanism, [`make_laplace_threshold`]), and per measure `rows` one, `sum` and `mean` two
//! (a count and a centred sum, [`make_laplace`]), `quantile` one ([`make_private_quantile`] per
//! cell). Composition is basic: the sum of every mechanism's privacy map, checked against the
//! run's spend before anything is returned.
//!
//! Bounding, applied before any mechanism sees the data: in each table a donor counts in at most
//! `C = max_cells_per_donor` cells (the first in key order); in a cell, at most
//! `L = max_rows_per_cell` of their rows (`donor_mean`: their rows count once), each taking the
//! donor's mean value clamped to the field's declared range. Quantiles are over the donors'
//! clamped means in the cell (one value per donor). So one donor changes, per table, the donor
//! counts by at most 1 in at most C cells, the row and value counts by at most `L·C` in total
//! and a centred sum by at most `L·C·(max − min)/2`.
//!
//! The set of released cells depends on the data (a `period` seen, a category present), so
//! cells are released only where the noisy donor count clears a threshold chosen for the
//! table's δ; it is never below the effective k, which stays as a second line.

use std::collections::{BTreeMap, HashMap};

use datadonor_schemas::privacy::{
    ContributionBounds, PrivacyPolicy, PrivacySpend, ReleasedColumn, ReleasedRow,
};
use datadonor_schemas::query::{Contribution, Measure, MeasureOp, QuerySpec};
use opendp::accuracy::{discrete_laplacian_scale_to_accuracy, laplacian_scale_to_accuracy};
use opendp::core::Measurement;
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{make_laplace, make_laplace_threshold, make_private_quantile};
use opendp::measures::{Approximate, MaxDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance, SymmetricDistance};

use crate::disclosure::CellKey;
use crate::engine::{CellDonorCube, DonorCell};
use crate::AnalyticsError;

/// Candidates of a DP quantile: this many points evenly over the field's declared range.
pub const QUANTILE_CANDIDATES: usize = 1024;
/// The confidence of the released error bars.
pub const CONFIDENCE: f64 = 0.95;

/// Laplace noise on a vector of values with L1 sensitivity.
type VectorLaplace<T> =
    Measurement<VectorDomain<AtomDomain<T>>, L1Distance<T>, MaxDivergence, Vec<T>>;

fn dp(e: opendp::error::Error) -> AnalyticsError {
    AnalyticsError::Engine(format!("differential privacy: {e}"))
}

/// The released columns and cells, and the privacy loss the mechanisms' own maps add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateRelease {
    /// Columns (a `donors` column first).
    pub columns: Vec<ReleasedColumn>,
    /// Released cells, values first and totals last within each position.
    pub rows: Vec<ReleasedRow>,
    /// Bounds applied.
    pub bounds: ContributionBounds,
    /// The sum of every mechanism's privacy map (basic composition); at most the run's spend.
    pub spent: PrivacySpend,
    /// Cells with data before the threshold.
    pub cells_seen: u64,
}

/// How many mechanisms a measure uses in one table.
fn mechanisms(m: &Measure) -> usize {
    match m.op {
        MeasureOp::Donors => 0,
        MeasureOp::Rows | MeasureOp::Quantile => 1,
        MeasureOp::Sum | MeasureOp::Mean => 2,
        MeasureOp::Std | MeasureOp::Min | MeasureOp::Max => 0,
    }
}

/// The quantile levels the release offers: deciles and quartiles. Levels near 0 or 1 would ask
/// for the extremes under another name.
pub const QUANTILE_LEVELS: [f64; 11] = [0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9];

/// Refuse what the release does not offer.
pub fn check_spec(spec: &QuerySpec) -> Result<(), AnalyticsError> {
    for m in &spec.measures {
        if m.op == MeasureOp::Quantile {
            let q = m.q.unwrap_or(0.5);
            if !QUANTILE_LEVELS.iter().any(|l| (l - q).abs() < 1e-12) {
                return Err(AnalyticsError::Refused(format!(
                    "{}: differentially private quantiles are offered at q = 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8 and 0.9",
                    m.column_name()
                )));
            }
        }
        if matches!(m.op, MeasureOp::Std | MeasureOp::Min | MeasureOp::Max) {
            return Err(AnalyticsError::Refused(format!(
                "{} is not offered under differential privacy (use quantiles for spread)",
                m.column_name()
            )));
        }
    }
    Ok(())
}

/// The smallest noise scale at least `sensitivity / epsilon` whose privacy map stays within
/// `epsilon` (the maps round up).
fn scale_for(
    epsilon: f64,
    sensitivity: f64,
    map: impl Fn(f64) -> Result<f64, AnalyticsError>,
) -> Result<f64, AnalyticsError> {
    let mut scale = sensitivity / epsilon;
    for _ in 0..64 {
        if map(scale)? <= epsilon {
            return Ok(scale);
        }
        scale *= 1.0 + 1e-9;
    }
    Err(AnalyticsError::Engine(
        "differential privacy: no noise scale meets the budget".into(),
    ))
}

fn key_string(key: &CellKey) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

/// A noisy vector of counts (discrete Laplace); the noise scale and its ε.
fn noisy_counts(
    values: &[i64],
    l1: i64,
    epsilon: f64,
) -> Result<(Vec<i64>, f64, f64), AnalyticsError> {
    let make = |scale: f64| -> Result<VectorLaplace<i64>, AnalyticsError> {
        make_laplace(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L1Distance::<i64>::default(),
            scale,
            None,
        )
        .map_err(dp)
    };
    let scale = scale_for(epsilon, l1 as f64, |s| make(s)?.map(&l1).map_err(dp))?;
    let m = make(scale)?;
    let eps = m.map(&l1).map_err(dp)?;
    Ok((m.invoke(&values.to_vec()).map_err(dp)?, scale, eps))
}

/// A noisy vector of sums (Laplace on the finest float grid); the noise scale and its ε.
fn noisy_sums(
    values: &[f64],
    l1: f64,
    epsilon: f64,
) -> Result<(Vec<f64>, f64, f64), AnalyticsError> {
    let make = |scale: f64| -> Result<VectorLaplace<f64>, AnalyticsError> {
        make_laplace(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            L1Distance::<f64>::default(),
            scale,
            None,
        )
        .map_err(dp)
    };
    let scale = scale_for(epsilon, l1, |s| make(s)?.map(&l1).map_err(dp))?;
    let m = make(scale)?;
    let eps = m.map(&l1).map_err(dp)?;
    Ok((m.invoke(&values.to_vec()).map_err(dp)?, scale, eps))
}

/// Donor counts released above a noisy threshold: the released keys with their noisy counts,
/// the scale, the threshold, and `(ε, δ)`.
#[allow(clippy::type_complexity)]
fn threshold_counts(
    counts: HashMap<String, i64>,
    cells_per_donor: u32,
    epsilon: f64,
    delta: f64,
    min_threshold: i64,
) -> Result<(HashMap<String, i64>, f64, i64, (f64, f64)), AnalyticsError> {
    type M = Measurement<
        MapDomain<AtomDomain<String>, AtomDomain<i64>>,
        L0PInfDistance<1, AbsoluteDistance<i64>>,
        Approximate<MaxDivergence>,
        HashMap<String, i64>,
    >;
    let c = i64::from(cells_per_donor);
    let d_in = (cells_per_donor, c, 1i64);
    let make = |scale: f64, threshold: i64| -> Result<M, AnalyticsError> {
        make_laplace_threshold(
            MapDomain::new(
                AtomDomain::<String>::default(),
                AtomDomain::<i64>::default(),
            ),
            L0PInfDistance(AbsoluteDistance::<i64>::default()),
            scale,
            threshold,
            None,
        )
        .map_err(dp)
    };
    let floor = min_threshold.max(2);
    let scale = scale_for(epsilon, c as f64, |s| {
        Ok(make(s, floor)?.map(&d_in).map_err(dp)?.0)
    })?;
    // The smallest threshold whose δ fits (δ falls as the threshold rises).
    let delta_at =
        |t: i64| -> Result<f64, AnalyticsError> { Ok(make(scale, t)?.map(&d_in).map_err(dp)?.1) };
    let mut hi = floor;
    while delta_at(hi)? > delta {
        hi = hi.checked_mul(2).ok_or_else(|| {
            AnalyticsError::Refused("the run's delta is too small for any threshold".into())
        })?;
    }
    let mut lo = floor;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if delta_at(mid)? <= delta {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let m = make(scale, hi)?;
    let map = m.map(&d_in).map_err(dp)?;
    Ok((m.invoke(&counts).map_err(dp)?, scale, hi, map))
}

/// A DP quantile of `values` over candidates evenly covering `[min, max]`; the value, the
/// scale and ε.
fn private_quantile(
    values: &[f64],
    q: f64,
    min: f64,
    max: f64,
    epsilon: f64,
) -> Result<(f64, f64, f64), AnalyticsError> {
    let step = (max - min) / (QUANTILE_CANDIDATES - 1) as f64;
    let candidates: Vec<f64> = (0..QUANTILE_CANDIDATES)
        .map(|i| min + step * i as f64)
        .collect();
    let make = |scale: f64| {
        make_private_quantile(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            SymmetricDistance,
            MaxDivergence,
            candidates.clone(),
            q,
            scale,
        )
        .map_err(dp)
    };
    let sens = 2.0 * q.max(1.0 - q);
    let scale = scale_for(epsilon, sens, |s| make(s)?.map(&1u32).map_err(dp))?;
    let m = make(scale)?;
    let eps = m.map(&1u32).map_err(dp)?;
    Ok((m.invoke(&values.to_vec()).map_err(dp)?, scale, eps))
}

/// The dimensions a key totals over, as a bit mask (bit j set: dimension j kept).
fn mask_of(key: &CellKey) -> u32 {
    key.iter()
        .enumerate()
        .fold(0, |m, (j, v)| if v.is_some() { m | 1 << j } else { m })
}

/// Release the cube of a run under `policy`, spending at most `spend`, with `k` as the least
/// threshold.
pub fn release(
    cube: &CellDonorCube,
    spec: &QuerySpec,
    policy: &PrivacyPolicy,
    spend: PrivacySpend,
    k: u32,
) -> Result<PrivateRelease, AnalyticsError> {
    check_spec(spec)?;
    spend
        .validate()
        .map_err(|e| AnalyticsError::Refused(e.to_string()))?;
    if spend.delta <= 0.0 {
        return Err(AnalyticsError::Refused(
            "the approval's delta must be above 0: which cells exist depends on the data, and they are released above a noisy threshold".into(),
        ));
    }
    let d = cube.dimensions.len();
    let tables: Vec<u32> = if spec.totals {
        (0..1u32 << d).rev().collect()
    } else {
        vec![(1u32 << d) - 1]
    };
    let t = tables.len() as f64;
    let mut measures: Vec<Measure> = Vec::new();
    if !spec.measures.iter().any(|m| m.op == MeasureOp::Donors) {
        measures.push(Measure {
            op: MeasureOp::Donors,
            field: None,
            q: None,
        });
    }
    measures.extend(spec.measures.iter().cloned());
    let per_table_mechs = 1 + measures.iter().map(mechanisms).sum::<usize>();
    let eps_mech = spend.epsilon / t / per_table_mechs as f64;
    let delta_table = spend.delta / t;
    let c = policy.max_cells_per_donor;
    let donor_mean = spec.contribution == Contribution::DonorMean;
    let l = if donor_mean {
        1
    } else {
        u64::from(policy.max_rows_per_cell)
    };
    let field_index = |m: &Measure| {
        m.field
            .as_ref()
            .and_then(|n| cube.fields.iter().position(|f| &f.name == n))
    };

    let mut columns: Vec<ReleasedColumn> = measures
        .iter()
        .map(|m| ReleasedColumn {
            name: m.column_name(),
            op: m.op,
            field: m.field.clone(),
            q: m.q,
            noise_scale: 0.0,
            epsilon: 0.0,
            decimals: match m.op {
                MeasureOp::Donors | MeasureOp::Rows => Some(0),
                _ => None,
            },
        })
        .collect();
    let mut rows: Vec<ReleasedRow> = Vec::new();
    let mut spent = PrivacySpend::default();
    let mut cells_seen = 0u64;

    for mask in tables {
        // Bounding: each donor in at most C cells of this table, the first in key order.
        let mut used: HashMap<u32, u32> = HashMap::new();
        let mut cells: Vec<(&CellKey, Vec<&DonorCell>)> = Vec::new();
        for (key, donors) in cube.cells.iter().filter(|(k, _)| mask_of(k) == mask) {
            let mut kept = Vec::new();
            for (id, dc) in donors {
                let n = used.entry(*id).or_insert(0);
                if *n < c {
                    *n += 1;
                    kept.push(dc);
                }
            }
            if !kept.is_empty() {
                cells.push((key, kept));
            }
        }
        cells_seen += cells.len() as u64;
        // Cell keys above a noisy threshold on the donor count.
        let counts: HashMap<String, i64> = cells
            .iter()
            .map(|(key, ds)| (key_string(key), ds.len() as i64))
            .collect();
        let (released, scale, _threshold, (e, dl)) =
            threshold_counts(counts, c, eps_mech, delta_table, i64::from(k))?;
        spent = spent.plus(PrivacySpend {
            epsilon: e,
            delta: dl,
        });
        let kept: Vec<(&CellKey, &Vec<&DonorCell>, i64)> = cells
            .iter()
            .filter_map(|(key, ds)| released.get(&key_string(key)).map(|n| (*key, ds, *n)))
            .collect();
        let count_err =
            discrete_laplacian_scale_to_accuracy(scale, 1.0 - CONFIDENCE).map_err(dp)?;
        let mut values: Vec<Vec<Option<f64>>> = kept.iter().map(|_| Vec::new()).collect();
        let mut errors: Vec<Vec<Option<f64>>> = kept.iter().map(|_| Vec::new()).collect();
        for (ci, m) in measures.iter().enumerate() {
            let col = &mut columns[ci];
            match (m.op, field_index(m)) {
                (MeasureOp::Donors, _) => {
                    col.noise_scale = scale;
                    col.epsilon = e;
                    for (i, (_, _, n)) in kept.iter().enumerate() {
                        values[i].push(Some(*n as f64));
                        errors[i].push(Some(count_err));
                    }
                }
                (MeasureOp::Rows, _) => {
                    let exact: Vec<i64> = kept
                        .iter()
                        .map(|(_, ds, _)| ds.iter().map(|d| d.rows.min(l) as i64).sum())
                        .collect();
                    let l1 = (l * u64::from(c)) as i64;
                    let (noisy, s, eps) = noisy_counts(&exact, l1, eps_mech)?;
                    spent = spent.plus(PrivacySpend {
                        epsilon: eps,
                        delta: 0.0,
                    });
                    col.noise_scale = s;
                    col.epsilon = eps;
                    let err =
                        discrete_laplacian_scale_to_accuracy(s, 1.0 - CONFIDENCE).map_err(dp)?;
                    for (i, v) in noisy.iter().enumerate() {
                        values[i].push(Some((*v).max(0) as f64));
                        errors[i].push(Some(err));
                    }
                }
                (MeasureOp::Sum | MeasureOp::Mean, Some(f)) => {
                    let fr = &cube.fields[f];
                    let mid = (fr.min + fr.max) / 2.0;
                    let half = (fr.max - fr.min) / 2.0;
                    let mut n = Vec::with_capacity(kept.len());
                    let mut s = Vec::with_capacity(kept.len());
                    for (_, ds, _) in &kept {
                        let (mut cn, mut cs) = (0i64, 0.0f64);
                        for d in ds.iter().filter(|d| d.n[f] > 0) {
                            let w = d.n[f].min(l);
                            let x = (d.s[f] / d.n[f] as f64).clamp(fr.min, fr.max);
                            cn += w as i64;
                            cs += w as f64 * (x - mid);
                        }
                        n.push(cn);
                        s.push(cs);
                    }
                    let l1n = (l * u64::from(c)) as i64;
                    let l1s = (l * u64::from(c)) as f64 * half;
                    let (nn, bn, en) = noisy_counts(&n, l1n, eps_mech)?;
                    let (ns, bs, es) = noisy_sums(&s, l1s, eps_mech)?;
                    spent = spent.plus(PrivacySpend {
                        epsilon: en + es,
                        delta: 0.0,
                    });
                    col.noise_scale = bs;
                    col.epsilon = en + es;
                    let z = 1.959_963_984_540_054;
                    for i in 0..kept.len() {
                        let cnt = nn[i].max(1) as f64;
                        let (v, sd) = if m.op == MeasureOp::Mean {
                            let r = ns[i] / cnt;
                            let v = (mid + r).clamp(fr.min, fr.max);
                            let var = 2.0 * (bs * bs + r * r * bn * bn) / (cnt * cnt);
                            (v, var.sqrt())
                        } else {
                            let v = mid * nn[i].max(0) as f64 + ns[i];
                            let var = 2.0 * (mid * mid * bn * bn + bs * bs);
                            (v, var.sqrt())
                        };
                        values[i].push(Some(v));
                        errors[i].push(Some(z * sd));
                    }
                }
                (MeasureOp::Quantile, Some(f)) => {
                    let fr = &cube.fields[f];
                    let q = m.q.unwrap_or(0.5);
                    // A donor's value is in up to C cells: each cell's quantile gets ε/C.
                    let eps_cell = eps_mech / f64::from(c);
                    let mut eps_max = 0.0f64;
                    for (i, (_, ds, _)) in kept.iter().enumerate() {
                        let xs: Vec<f64> = ds
                            .iter()
                            .filter(|d| d.n[f] > 0)
                            .map(|d| (d.s[f] / d.n[f] as f64).clamp(fr.min, fr.max))
                            .collect();
                        let (v, s, eps) = private_quantile(&xs, q, fr.min, fr.max, eps_cell)?;
                        col.noise_scale = s;
                        eps_max = eps_max.max(eps);
                        values[i].push(Some(v));
                        errors[i].push(None);
                    }
                    let eps = eps_max * f64::from(c);
                    spent = spent.plus(PrivacySpend {
                        epsilon: eps,
                        delta: 0.0,
                    });
                    col.epsilon = eps;
                }
                _ => {
                    return Err(AnalyticsError::Refused(format!(
                        "{}: no such numeric field",
                        m.column_name()
                    )))
                }
            }
        }
        for (i, (key, _, _)) in kept.iter().enumerate() {
            rows.push(ReleasedRow {
                key: (*key).clone(),
                values: std::mem::take(&mut values[i]),
                error95: std::mem::take(&mut errors[i]),
                suppressed: None,
            });
        }
    }
    // Values first, totals last, within each position.
    rows.sort_by(|a, b| {
        let ka: Vec<(bool, &Option<String>)> = a.key.iter().map(|v| (v.is_none(), v)).collect();
        let kb: Vec<(bool, &Option<String>)> = b.key.iter().map(|v| (v.is_none(), v)).collect();
        ka.cmp(&kb)
    });
    let slack = 1.0 + 1e-9;
    if spent.epsilon > spend.epsilon * slack || spent.delta > spend.delta * slack {
        return Err(AnalyticsError::Engine(format!(
            "differential privacy: the mechanisms' maps add up to ε = {}, δ = {}, over the run's ε = {}, δ = {}",
            spent.epsilon, spent.delta, spend.epsilon, spend.delta
        )));
    }
    Ok(PrivateRelease {
        columns,
        rows,
        bounds: ContributionBounds {
            max_rows_per_cell: policy.max_rows_per_cell,
            max_cells_per_donor: c,
            tables: t as u32,
        },
        spent,
        cells_seen,
    })
}

/// Exact (non-private) per-cell donor counts of a cube, for tests that compare a release with
/// the truth.
pub fn exact_donor_counts(cube: &CellDonorCube) -> BTreeMap<CellKey, u64> {
    cube.cells
        .iter()
        .map(|(k, d)| (k.clone(), d.len() as u64))
        .collect()
}

/// The half-width of a 95 % interval of continuous Laplace noise of scale `b`.
pub fn laplace_error95(b: f64) -> f64 {
    laplacian_scale_to_accuracy(b, 1.0 - CONFIDENCE).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    //! Statistical checks of the mechanisms as this module composes them. OpenDP samples from
    //! OpenSSL's CSPRNG, which takes no seed: the bounds are set so that a correct mechanism fails
    //! them with probability below about 1e-6, and a noise scale off by a factor of 1.5 fails them.

    use super::*;
    use crate::engine::FieldRange;

    fn policy(l: u32, c: u32) -> PrivacyPolicy {
        PrivacyPolicy {
            epsilon: 100.0,
            delta: 1e-3,
            researcher_epsilon: 100.0,
            researcher_delta: 1e-3,
            max_rows_per_cell: l,
            max_cells_per_donor: c,
        }
    }

    fn spec(measures: &str) -> QuerySpec {
        QuerySpec::from_toml(&format!(
            "study = \"t2d-dk\"\npurpose = \"p\"\nresearcher = \"r\"\n{measures}"
        ))
        .expect("spec")
    }

    /// One cell (no grouping) with the given donors.
    fn cube(donors: Vec<DonorCell>) -> CellDonorCube {
        let cells = donors
            .into_iter()
            .enumerate()
            .map(|(i, d)| (i as u32, d))
            .collect();
        CellDonorCube {
            dimensions: vec![],
            measures: vec![],
            fields: vec![FieldRange {
                name: "hba1c".into(),
                min: 3.0,
                max: 20.0,
            }],
            cells: BTreeMap::from([(vec![], cells)]),
            rows_scanned: 0,
            batches: 0,
        }
    }

    fn donor(rows: u64, value: f64) -> DonorCell {
        DonorCell {
            rows,
            n: vec![rows],
            s: vec![value * rows as f64],
            ss: vec![0.0],
        }
    }

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (
            m,
            xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0),
        )
    }

    #[test]
    fn noise_on_a_count_has_the_stated_scale() {
        let c = cube((0..2000).map(|_| donor(1, 7.0)).collect());
        let s = spec("[[measures]]\nop = \"rows\"\n");
        let spend = PrivacySpend {
            epsilon: 1.0,
            delta: 1e-6,
        };
        let mut donors = Vec::new();
        let mut rows = Vec::new();
        let mut scale = (0.0, 0.0);
        for _ in 0..1000 {
            let r = release(&c, &s, &policy(1, 1), spend, 5).expect("release");
            assert!(r.spent.epsilon <= 1.0 + 1e-9 && r.spent.delta <= 1e-6 * (1.0 + 1e-9));
            scale = (r.columns[0].noise_scale, r.columns[1].noise_scale);
            donors.push(r.rows[0].values[0].expect("donors"));
            rows.push(r.rows[0].values[1].expect("rows"));
        }
        // Two mechanisms share ε = 1: each gets 0.5, and one donor moves each count by 1.
        assert!((scale.0 - 2.0).abs() < 1e-6, "{scale:?}");
        assert!((scale.1 - 2.0).abs() < 1e-6, "{scale:?}");
        for (xs, b) in [(&donors, scale.0), (&rows, scale.1)] {
            // Discrete Laplace of scale b: variance 2e^{-1/b}/(1-e^{-1/b})^2 (about 2b²).
            let q = (-1.0 / b).exp();
            let var = 2.0 * q / ((1.0 - q) * (1.0 - q));
            let (m, v) = mean_var(xs);
            assert!(
                (m - 2000.0).abs() < 6.0 * (var / xs.len() as f64).sqrt(),
                "mean {m}"
            );
            assert!(
                v > 0.7 * var && v < 1.4 * var,
                "variance {v}, expected {var}"
            );
        }
    }

    #[test]
    fn clamping_and_the_row_bound_hold() {
        // 999 donors with one row of 7.0; one donor with a million rows of an impossible value.
        let mut ds: Vec<DonorCell> = (0..999).map(|_| donor(1, 7.0)).collect();
        ds.push(donor(1_000_000, 1.0e6));
        let c = cube(ds);
        let s = spec(
            "[[measures]]\nop = \"rows\"\n[[measures]]\nop = \"mean\"\nfield = \"hba1c\"\n[[measures]]\nop = \"sum\"\nfield = \"hba1c\"\n",
        );
        let spend = PrivacySpend {
            epsilon: 50.0,
            delta: 1e-4,
        };
        let l = 4;
        // Rows: the heavy donor counts L rows, not a million. Mean: its value is clamped to 20
        // and weighs L rows. Sum: L rows of 20.
        let exact_rows = 999.0 + f64::from(l);
        let exact_mean = (999.0 * 7.0 + f64::from(l) * 20.0) / exact_rows;
        let exact_sum = 999.0 * 7.0 + f64::from(l) * 20.0;
        let exact = [exact_rows, exact_mean, exact_sum];
        // Each released value should fall within its 95 % error bar about 95 % of the time: of
        // 50 releases at least 40 (a binomial(50, 0.95) falls below 40 with probability ~1e-5),
        // which an unclamped heavy donor (a million rows, a value of a million) fails at once.
        // Laplace noise has heavy tails, so no single draw is held to a multiple of its bar.
        let mut within = [0usize; 3];
        let runs = 50;
        for _ in 0..runs {
            let r = release(&c, &s, &policy(l, 1), spend, 5).expect("release");
            let v = |i: usize| r.rows[0].values[i].expect("value");
            let e = |i: usize| r.rows[0].error95[i].expect("error");
            assert!((3.0..=20.0).contains(&v(2)), "mean {}", v(2));
            for (k, x) in exact.iter().enumerate() {
                if (v(k + 1) - x).abs() <= e(k + 1) {
                    within[k] += 1;
                }
            }
        }
        for (k, name) in ["rows", "mean", "sum"].iter().enumerate() {
            assert!(
                within[k] >= 40,
                "{name}: only {} of {runs} releases within their 95 % error bar of {}",
                within[k],
                exact[k]
            );
        }
    }

    #[test]
    fn a_donor_counts_in_at_most_c_cells_of_a_table() {
        // One donor in five cells, with nobody else: with C = 2 only two cells could hold them,
        // and a threshold of at least k = 2 releases none of these one-donor cells.
        let mut cells = BTreeMap::new();
        for k in ["a", "b", "c", "d", "e"] {
            cells.insert(vec![Some(k.to_string())], vec![(0u32, donor(1, 7.0))]);
        }
        let c = CellDonorCube {
            dimensions: vec!["region".into()],
            measures: vec![],
            fields: vec![],
            cells,
            rows_scanned: 0,
            batches: 0,
        };
        let s = QuerySpec::from_toml(
            "study = \"t2d-dk\"\npurpose = \"p\"\nresearcher = \"r\"\ngroup_by = [\"region\"]\n[[measures]]\nop = \"donors\"\n",
        )
        .expect("spec");
        let r = release(
            &c,
            &s,
            &policy(1, 2),
            PrivacySpend {
                epsilon: 1.0,
                delta: 1e-6,
            },
            2,
        )
        .expect("release");
        assert_eq!(
            r.cells_seen, 2,
            "the donor was kept in {} cells",
            r.cells_seen
        );
        assert!(r.rows.len() <= 2);
    }

    #[test]
    fn quantiles_near_the_extremes_are_refused() {
        for q in ["0.01", "0.99", "0.05", "0.15"] {
            let s = spec(&format!(
                "[[measures]]\nop = \"quantile\"\nfield = \"hba1c\"\nq = {q}\n"
            ));
            let e = release(
                &cube(vec![donor(1, 7.0)]),
                &s,
                &policy(1, 1),
                PrivacySpend {
                    epsilon: 1.0,
                    delta: 1e-6,
                },
                2,
            )
            .expect_err("refused");
            assert!(e.to_string().contains("offered at q = 0.1"), "{e}");
        }
    }

    #[test]
    fn a_low_quantile_of_k_donors_is_not_the_lowest_donors_value() {
        // k = 5 donors; q = 0.1 without noise is close to the smallest value, 3.17231.
        let mut ds: Vec<DonorCell> = vec![donor(1, 3.172_31)];
        ds.extend((0..4).map(|i| donor(1, 10.0 + f64::from(i))));
        let c = cube(ds);
        let s = spec("[[measures]]\nop = \"quantile\"\nfield = \"hba1c\"\nq = 0.1\n");
        let spend = PrivacySpend {
            epsilon: 1.0,
            delta: 1e-3,
        };
        let mut hits = 0;
        let mut released = 0;
        for _ in 0..200 {
            let r = release(&c, &s, &policy(1, 1), spend, 2).expect("release");
            if let Some(row) = r.rows.first() {
                released += 1;
                if row.values[1].is_some_and(|v| (v - 3.172_31).abs() < 1e-9) {
                    hits += 1;
                }
            }
        }
        assert_eq!(
            hits, 0,
            "{hits} of {released} releases gave the donor's value"
        );
    }
}
