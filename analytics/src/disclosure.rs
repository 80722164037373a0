//! Disclosure control: primary and secondary cell suppression (see `DISCLOSURE.md`).
//!
//! The input is a table of cells, each with a key (one value per dimension, `None` for a total
//! over that dimension) and the set of distinct donors behind it. Every cell with fewer than k
//! donors is suppressed (primary). When margins are published, every *line* (the cells sharing
//! all coordinates but one, plus the margin of that line) is then checked until nothing changes:
//! if exactly one cell of the line is suppressed, or the suppressed cells together cover fewer
//! than k distinct donors, the published cell of the line with the fewest donors is suppressed
//! too (the margin when no other cell is left). No cell is ever dropped: suppressed cells stay
//! in the table, marked with a [`Suppression`] reason.

use std::collections::{HashMap, HashSet};

/// A cell key: one value per dimension, `None` where the cell is a total over that dimension.
pub type CellKey = Vec<Option<String>>;

/// Why a cell (or a measure of a cell) is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    /// Fewer than k distinct donors in the cell.
    FewDonors,
    /// Fewer than k distinct donors with a value of the measure's field.
    FewValues,
    /// Suppressed so that a suppressed cell cannot be derived from published ones.
    Secondary,
}

impl Suppression {
    /// The label shown in tables.
    pub fn label(self) -> &'static str {
        match self {
            Suppression::FewDonors => "suppressed (<k)",
            Suppression::FewValues => "suppressed (<k values)",
            Suppression::Secondary => "suppressed (secondary)",
        }
    }
}

/// One line: cells that differ only in one dimension, and their margin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The dimension that varies.
    pub dimension: usize,
    /// Indices of the cells with a value in that dimension.
    pub members: Vec<usize>,
    /// Index of the margin (the cell with `None` in that dimension), when present.
    pub margin: Option<usize>,
}

/// Every line of a table of cells.
pub fn lines(keys: &[CellKey]) -> Vec<Line> {
    let index: HashMap<&CellKey, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut groups: HashMap<(usize, CellKey), Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        for (j, v) in key.iter().enumerate() {
            if v.is_some() {
                let mut m = key.clone();
                m[j] = None;
                groups.entry((j, m)).or_default().push(i);
            }
        }
    }
    let mut out: Vec<Line> = groups
        .into_iter()
        .map(|((dimension, margin_key), mut members)| {
            members.sort_unstable();
            Line {
                dimension,
                margin: index.get(&margin_key).copied(),
                members,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.dimension, &a.members).cmp(&(b.dimension, &b.members)));
    out
}

fn union_at_least(sets: &[&[u32]], k: usize) -> (usize, bool) {
    let mut seen: HashSet<u32> = HashSet::new();
    for s in sets {
        for d in *s {
            seen.insert(*d);
        }
    }
    (seen.len(), seen.len() >= k)
}

/// Suppress cells of one donor-set family.
///
/// `donors[i]` is the set of distinct donors behind cell `i` for this family (the cell's
/// donors, or the donors with a value of one field); `initial` carries suppressions decided
/// before (for a field family: the cell-level result). Cells with `0 < donors < k` get
/// `primary`; with `margins`, secondary suppression runs to a fixpoint over every line.
pub fn suppress(
    keys: &[CellKey],
    donors: &[Vec<u32>],
    k: u32,
    margins: bool,
    initial: &[Option<Suppression>],
    primary: Suppression,
) -> Vec<Option<Suppression>> {
    let k = k as usize;
    let mut status: Vec<Option<Suppression>> = (0..keys.len())
        .map(|i| initial.get(i).copied().flatten())
        .collect();
    for (i, d) in donors.iter().enumerate() {
        if status[i].is_none() && !d.is_empty() && d.len() < k {
            status[i] = Some(primary);
        }
    }
    if !margins {
        return status;
    }
    let lines = lines(keys);
    loop {
        let mut changed = false;
        for line in &lines {
            let cells: Vec<usize> = line.members.iter().copied().chain(line.margin).collect();
            let suppressed: Vec<usize> = cells
                .iter()
                .copied()
                .filter(|c| status[*c].is_some())
                .collect();
            if suppressed.is_empty() || suppressed.len() == cells.len() {
                continue;
            }
            let sets: Vec<&[u32]> = suppressed.iter().map(|c| donors[*c].as_slice()).collect();
            let (_, enough) = union_at_least(&sets, k);
            if suppressed.len() == 1 || !enough {
                let pick = line
                    .members
                    .iter()
                    .copied()
                    .filter(|c| status[*c].is_none())
                    .min_by_key(|c| (donors[*c].len(), *c))
                    .or(line.margin.filter(|m| status[*m].is_none()));
                if let Some(p) = pick {
                    status[p] = Some(Suppression::Secondary);
                    changed = true;
                }
            }
        }
        if !changed {
            return status;
        }
    }
}

/// Check the guarantees of [`suppress`] (used by tests and as a run-time self-check):
/// no published cell has fewer than `k` donors, and in every line with a published cell the
/// suppressed cells are not exactly one and cover either no donor or at least `k`.
pub fn check(
    keys: &[CellKey],
    donors: &[Vec<u32>],
    k: u32,
    margins: bool,
    status: &[Option<Suppression>],
) -> Result<(), String> {
    for (i, d) in donors.iter().enumerate() {
        if status[i].is_none() && !d.is_empty() && d.len() < k as usize {
            return Err(format!(
                "cell {:?} published with {} donors",
                keys[i],
                d.len()
            ));
        }
    }
    if !margins {
        return Ok(());
    }
    for line in lines(keys) {
        let cells: Vec<usize> = line.members.iter().copied().chain(line.margin).collect();
        let suppressed: Vec<usize> = cells
            .iter()
            .copied()
            .filter(|c| status[*c].is_some())
            .collect();
        if suppressed.len() == cells.len() || suppressed.is_empty() {
            continue;
        }
        let sets: Vec<&[u32]> = suppressed.iter().map(|c| donors[*c].as_slice()).collect();
        let (n, _) = union_at_least(&sets, k as usize);
        if suppressed.len() == 1 {
            return Err(format!("line {line:?} has exactly one suppressed cell"));
        }
        if n != 0 && n < k as usize {
            return Err(format!(
                "line {line:?}: suppressed cells cover {n} donors, fewer than k = {k}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The full cube of a set of rows `(donor, dims)`: every subset of dimensions replaced by
    /// totals, as the engine builds it.
    fn cube(rows: &[(u32, Vec<u8>)], d: usize, totals: bool) -> (Vec<CellKey>, Vec<Vec<u32>>) {
        let mut cells: BTreeMap<CellKey, HashSet<u32>> = BTreeMap::new();
        let masks: Vec<u32> = if totals {
            (0..1u32 << d).collect()
        } else {
            vec![(1u32 << d) - 1]
        };
        for (donor, dims) in rows {
            for mask in &masks {
                let key: CellKey = (0..d)
                    .map(|j| (mask >> j & 1 == 1).then(|| dims[j].to_string()))
                    .collect();
                cells.entry(key).or_default().insert(*donor);
            }
        }
        let keys: Vec<CellKey> = cells.keys().cloned().collect();
        let donors = cells
            .values()
            .map(|s| {
                let mut v: Vec<u32> = s.iter().copied().collect();
                v.sort_unstable();
                v
            })
            .collect();
        (keys, donors)
    }

    #[test]
    fn single_small_cell_forces_a_second_suppression() {
        // Two regions × flag; region b/false has 2 donors.
        let mut rows = Vec::new();
        let mut id = 0;
        for (r, f, n) in [(0u8, 0u8, 10), (0, 1, 12), (1, 0, 2), (1, 1, 9)] {
            for _ in 0..n {
                rows.push((id, vec![r, f]));
                id += 1;
            }
        }
        let (keys, donors) = cube(&rows, 2, true);
        let st = suppress(&keys, &donors, 5, true, &[], Suppression::FewDonors);
        check(&keys, &donors, 5, true, &st).expect("guarantees hold");
        let small = keys
            .iter()
            .position(|k| k == &vec![Some("1".to_string()), Some("0".to_string())])
            .expect("cell");
        assert_eq!(st[small], Some(Suppression::FewDonors));
        assert!(
            st.iter()
                .filter(|s| **s == Some(Suppression::Secondary))
                .count()
                >= 3
        );
        // Without margins only the small cell goes.
        let (keys, donors) = cube(&rows, 2, false);
        let st = suppress(&keys, &donors, 5, false, &[], Suppression::FewDonors);
        assert_eq!(st.iter().filter(|s| s.is_some()).count(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn published_cells_never_isolate_fewer_than_k_donors(
            d in 0usize..=3,
            k in 2u32..8,
            totals in any::<bool>(),
            levels in proptest::collection::vec(1u8..4, 3),
            rows in proptest::collection::vec((0u32..40, proptest::collection::vec(0u8..4, 3)), 0..120),
        ) {
            let rows: Vec<(u32, Vec<u8>)> = rows
                .into_iter()
                .map(|(donor, dims)| (donor, dims.iter().zip(&levels).map(|(v, l)| v % l).collect()))
                .collect();
            let (keys, donors) = cube(&rows, d, totals);
            let st = suppress(&keys, &donors, k, totals, &[], Suppression::FewDonors);
            prop_assert!(check(&keys, &donors, k, totals, &st).is_ok(), "{:?}", check(&keys, &donors, k, totals, &st));
            // No cell disappears.
            prop_assert_eq!(st.len(), keys.len());
        }
    }
}
