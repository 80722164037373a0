//! Merkle tree conformance: the published transparency-dev / RFC 6962 vectors
//! under the repository's `testdata/vectors/merkle/` (sources in `testdata/SOURCES.md`),
//! the reference tree, and property tests.
//!
//! A missing vector makes the tests fail with its path, never skip.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datadonor_schemas::merkle::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, root, verify_consistency,
    verify_inclusion, Hash, MerkleError, MerkleLog,
};
use proptest::prelude::*;
use serde::Deserialize;

/// The repository's `testdata/` directory, which holds `SHA256SUMS` and `vectors/`.
fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn vectors_dir() -> PathBuf {
    let dir = testdata_dir().join("vectors");
    assert!(
        dir.join("merkle").is_dir(),
        "Merkle test vectors not found at {} (these tests must not be skipped)",
        dir.join("merkle").display()
    );
    dir
}

/// The bytes of a vector file; a missing file fails the test with its path.
fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()))
}

fn b64(s: &str) -> Vec<u8> {
    STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("bad base64 {s:?}: {e}"))
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InclusionCase {
    #[serde(default)]
    file: Option<String>,
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsistencyCase {
    #[serde(default)]
    file: Option<String>,
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
struct Combined {
    inclusion: Vec<InclusionCase>,
    consistency: Vec<ConsistencyCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferenceTree {
    leaf_inputs_hex: Vec<String>,
    root_hashes_by_size_hex: Vec<String>,
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// Every `*.json` under `merkle/<kind>/`, keyed by its path relative to `merkle/`.
fn load_cases<T: for<'de> Deserialize<'de>>(kind: &str) -> BTreeMap<String, T> {
    let merkle = vectors_dir().join("merkle");
    let mut files = Vec::new();
    json_files(&merkle.join(kind), &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&merkle)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = String::from_utf8(read(&path)).unwrap();
            let case: T =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (rel, case)
        })
        .collect()
}

fn run_inclusion(case: &InclusionCase) -> Result<(), MerkleError> {
    let proof: Vec<Vec<u8>> = case.proof.iter().flatten().map(|p| b64(p)).collect();
    verify_inclusion(
        case.leaf_idx,
        case.tree_size,
        &b64(&case.leaf_hash),
        &proof,
        &b64(&case.root),
    )
}

fn run_consistency(case: &ConsistencyCase) -> Result<(), MerkleError> {
    let proof: Vec<Vec<u8>> = case.proof.iter().flatten().map(|p| b64(p)).collect();
    verify_consistency(
        case.size1,
        case.size2,
        &proof,
        &b64(&case.root1),
        &b64(&case.root2),
    )
}

#[test]
fn vector_files_match_sha256sums() {
    let dir = testdata_dir();
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", sums_path.display()));
    let mut checked = 0;
    for line in sums.lines() {
        let Some((want, path)) = line.split_once("  ") else {
            continue;
        };
        if !path.starts_with("vectors/merkle/") {
            continue;
        }
        let file = dir.join(path);
        let data =
            std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {} ({e})", file.display()));
        let got = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data));
        assert_eq!(got, want, "{path} does not match SHA256SUMS");
        checked += 1;
    }
    assert_eq!(checked, 198, "expected 198 merkle files in SHA256SUMS");
}

#[test]
fn every_inclusion_vector() {
    let cases: BTreeMap<String, InclusionCase> = load_cases("inclusion");
    assert_eq!(cases.len(), 98, "number of inclusion vector files");
    let mut failures = Vec::new();
    for (file, case) in &cases {
        let result = run_inclusion(case);
        if result.is_err() != case.want_err {
            failures.push(format!(
                "{file} ({}): wantErr={} got {result:?}",
                case.desc, case.want_err
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases.values().filter(|c| !c.want_err).count(), 6);
}

#[test]
fn every_consistency_vector() {
    let cases: BTreeMap<String, ConsistencyCase> = load_cases("consistency");
    assert_eq!(cases.len(), 98, "number of consistency vector files");
    let mut failures = Vec::new();
    for (file, case) in &cases {
        let result = run_consistency(case);
        if result.is_err() != case.want_err {
            failures.push(format!(
                "{file} ({}): wantErr={} got {result:?}",
                case.desc, case.want_err
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases.values().filter(|c| !c.want_err).count(), 6);
}

#[test]
fn combined_file_matches_individual_files_and_passes() {
    let path = vectors_dir().join("merkle/all-inclusion-consistency-combined.json");
    let combined: Combined = serde_json::from_slice(&read(&path)).unwrap();
    let inclusion: BTreeMap<String, InclusionCase> = load_cases("inclusion");
    let consistency: BTreeMap<String, ConsistencyCase> = load_cases("consistency");
    assert_eq!(combined.inclusion.len(), inclusion.len());
    assert_eq!(combined.consistency.len(), consistency.len());
    for case in &combined.inclusion {
        let file = case.file.clone().expect("combined case without file");
        let mut single = inclusion
            .get(&file)
            .unwrap_or_else(|| panic!("{file}"))
            .clone();
        single.file = case.file.clone();
        assert_eq!(&single, case, "{file}");
        assert_eq!(run_inclusion(case).is_err(), case.want_err, "{file}");
    }
    for case in &combined.consistency {
        let file = case.file.clone().expect("combined case without file");
        let mut single = consistency
            .get(&file)
            .unwrap_or_else(|| panic!("{file}"))
            .clone();
        single.file = case.file.clone();
        assert_eq!(&single, case, "{file}");
        assert_eq!(run_consistency(case).is_err(), case.want_err, "{file}");
    }
}

#[test]
fn stricter_policy_cases() {
    let inclusion: BTreeMap<String, InclusionCase> = load_cases("inclusion");
    let consistency: BTreeMap<String, ConsistencyCase> = load_cases("consistency");
    let case = &inclusion["inclusion/single-entry/empty-root-and-leaf.json"];
    assert!(matches!(
        run_inclusion(case),
        Err(MerkleError::WrongHashLength { .. })
    ));
    for name in [
        "consistency/additional/size1-is-zero-and-size2-is-not-zero.json",
        "consistency/additional/size1-is-zero-and-does-not-equal-size2.json",
        "consistency/additional/sizes-are-equal-zero-and-proof-is-empty.json",
        "consistency/additional/consistency-check-on-empty-tree-size1-is-zero-is-useless.json",
    ] {
        assert_eq!(
            run_consistency(&consistency[name]),
            Err(MerkleError::Size1Zero),
            "{name}"
        );
    }
    // Equal sizes with an empty proof compare the roots only, even 12-byte ones.
    let case = &consistency["consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"];
    assert_eq!(b64(&case.root1).len(), 12);
    assert_eq!(run_consistency(case), Ok(()));
    let case = &consistency["consistency/additional/sizes-are-equal-one-but-roots-are-not.json"];
    assert_eq!(run_consistency(case), Err(MerkleError::RootMismatch));
}

fn reference_tree() -> (Vec<Hash>, Vec<Hash>) {
    let path = vectors_dir().join("merkle/rfc6962-reference-tree.json");
    let tree: ReferenceTree = serde_json::from_slice(&read(&path)).unwrap();
    let leaves = tree
        .leaf_inputs_hex
        .iter()
        .map(|h| leaf_hash(&hex::decode(h).unwrap()))
        .collect();
    let roots = tree
        .root_hashes_by_size_hex
        .iter()
        .map(|h| Hash::from_slice(&hex::decode(h).unwrap()).unwrap())
        .collect();
    (leaves, roots)
}

#[test]
fn reference_tree_roots_and_proofs() {
    let (leaves, roots) = reference_tree();
    assert_eq!(leaves.len(), 8);
    assert_eq!(roots.len(), 9);
    assert_eq!(roots[0], empty_root());
    let log: MerkleLog = leaves.iter().copied().collect();
    assert_eq!(log.root(), roots[8]);
    for n in 0..=8usize {
        let prefix = &leaves[..n];
        assert_eq!(root(prefix), roots[n], "root of size {n}");
        assert_eq!(
            log.root_at(n as u64).unwrap(),
            roots[n],
            "log root of size {n}"
        );
        for i in 0..n as u64 {
            let proof = inclusion_proof(prefix, i).unwrap();
            assert_eq!(proof, log.inclusion_proof(i, n as u64).unwrap());
            verify_inclusion(i, n as u64, &leaves[i as usize].0, &proof, &roots[n].0)
                .unwrap_or_else(|e| panic!("inclusion {i} in {n}: {e}"));
        }
        for m in 1..=n as u64 {
            let proof = consistency_proof(prefix, m).unwrap();
            assert_eq!(proof, log.consistency_proof(m, n as u64).unwrap());
            verify_consistency(m, n as u64, &proof, &roots[m as usize].0, &roots[n].0)
                .unwrap_or_else(|e| panic!("consistency {m} -> {n}: {e}"));
        }
    }
}

/// The happy-path vectors are proofs over the reference tree: ours must be
/// byte-identical to them.
#[test]
fn generated_proofs_equal_published_happy_paths() {
    let (leaves, roots) = reference_tree();
    let mut compared = 0;
    let inclusion: BTreeMap<String, InclusionCase> = load_cases("inclusion");
    for (file, case) in inclusion.iter().filter(|(_, c)| !c.want_err) {
        let n = case.tree_size as usize;
        if n > 8 || b64(&case.root) != roots[n].0 {
            continue;
        }
        let ours = inclusion_proof(&leaves[..n], case.leaf_idx).unwrap();
        let theirs: Vec<Vec<u8>> = case.proof.iter().flatten().map(|p| b64(p)).collect();
        let ours: Vec<Vec<u8>> = ours.iter().map(|h| h.0.to_vec()).collect();
        assert_eq!(ours, theirs, "{file}");
        compared += 1;
    }
    let consistency: BTreeMap<String, ConsistencyCase> = load_cases("consistency");
    for (file, case) in consistency.iter().filter(|(_, c)| !c.want_err) {
        let (m, n) = (case.size1 as usize, case.size2 as usize);
        if n > 8 || m == 0 || b64(&case.root2) != roots[n].0 || b64(&case.root1) != roots[m].0 {
            continue;
        }
        let ours = consistency_proof(&leaves[..n], case.size1).unwrap();
        let theirs: Vec<Vec<u8>> = case.proof.iter().flatten().map(|p| b64(p)).collect();
        let ours: Vec<Vec<u8>> = ours.iter().map(|h| h.0.to_vec()).collect();
        assert_eq!(ours, theirs, "{file}");
        compared += 1;
    }
    assert!(compared >= 10, "only {compared} happy paths compared");
}

#[test]
fn large_log_proofs_are_consistent() {
    // 2^17 + 2^12 + 5 leaves: proofs from a cached log for sizes across it.
    let n: u64 = (1 << 17) + (1 << 12) + 5;
    let mut log = MerkleLog::new();
    for i in 0..n {
        assert_eq!(log.push(leaf_hash(&i.to_le_bytes())), i);
    }
    let full_root = root(log.leaves());
    assert_eq!(log.root(), full_root);
    for &(index, size) in &[(0, n), (n - 1, n), (12_345, n), (70_000, 100_003), (1, 2)] {
        let proof = log.inclusion_proof(index, size).unwrap();
        let leaf = log.leaf(index).unwrap();
        verify_inclusion(index, size, &leaf.0, &proof, &log.root_at(size).unwrap().0).unwrap();
    }
    for &(size1, size2) in &[(1, n), (n - 1, n), (65_536, n), (99_999, 131_073), (3, 7)] {
        let proof = log.consistency_proof(size1, size2).unwrap();
        let r1 = log.root_at(size1).unwrap();
        let r2 = log.root_at(size2).unwrap();
        verify_consistency(size1, size2, &proof, &r1.0, &r2.0).unwrap();
    }
    assert_eq!(
        log.root_at(100_003).unwrap(),
        root(&log.leaves()[..100_003])
    );
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    out.0[(bit / 8) % 32] ^= 1 << (bit % 8);
    out
}

fn random_log(n: usize, seed: u64) -> MerkleLog {
    (0..n as u64)
        .map(|i| leaf_hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn inclusion_proofs_verify_and_tampering_fails(
        n in 1usize..200,
        seed in any::<u64>(),
        bit in 0usize..256,
        shift in any::<u64>(),
    ) {
        let log = random_log(n, seed);
        let size = n as u64;
        let root_hash = log.root();
        prop_assert_eq!(root_hash, root(log.leaves()));
        for i in 0..size {
            let leaf = log.leaf(i).unwrap();
            let proof = log.inclusion_proof(i, size).unwrap();
            prop_assert_eq!(&proof, &inclusion_proof(log.leaves(), i).unwrap());
            prop_assert!(verify_inclusion(i, size, &leaf.0, &proof, &root_hash.0).is_ok());
            // Flip one bit of each proof element in turn.
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j] = flip(&bad[j], bit + j);
                prop_assert!(verify_inclusion(i, size, &leaf.0, &bad, &root_hash.0).is_err());
            }
            // Wrong leaf or root.
            prop_assert!(verify_inclusion(i, size, &flip(&leaf, bit).0, &proof, &root_hash.0).is_err());
            prop_assert!(verify_inclusion(i, size, &leaf.0, &proof, &flip(&root_hash, bit).0).is_err());
            // Wrong index, in range and out of range.
            if size > 1 {
                let other = (i + 1 + shift % (size - 1)) % size;
                prop_assert_ne!(other, i);
                prop_assert!(verify_inclusion(other, size, &leaf.0, &proof, &root_hash.0).is_err());
            }
            prop_assert!(verify_inclusion(i + size, size, &leaf.0, &proof, &root_hash.0).is_err());
            // Truncated and extended proofs.
            if !proof.is_empty() {
                prop_assert!(verify_inclusion(i, size, &leaf.0, &proof[1..], &root_hash.0).is_err());
            }
            let mut longer = proof.clone();
            longer.push(leaf);
            prop_assert!(verify_inclusion(i, size, &leaf.0, &longer, &root_hash.0).is_err());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_tampering_fails(
        n in 1usize..200,
        seed in any::<u64>(),
        bit in 0usize..256,
    ) {
        let log = random_log(n, seed);
        let size2 = n as u64;
        let root2 = log.root();
        for size1 in 1..=size2 {
            let root1 = log.root_at(size1).unwrap();
            let proof = log.consistency_proof(size1, size2).unwrap();
            prop_assert_eq!(&proof, &consistency_proof(log.leaves(), size1).unwrap());
            prop_assert!(verify_consistency(size1, size2, &proof, &root1.0, &root2.0).is_ok());
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j] = flip(&bad[j], bit + j);
                prop_assert!(verify_consistency(size1, size2, &bad, &root1.0, &root2.0).is_err());
            }
            prop_assert!(verify_consistency(size1, size2, &proof, &flip(&root1, bit).0, &root2.0).is_err());
            prop_assert!(verify_consistency(size1, size2, &proof, &root1.0, &flip(&root2, bit).0).is_err());
            if !proof.is_empty() {
                prop_assert!(verify_consistency(size1, size2, &proof[1..], &root1.0, &root2.0).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root1);
            prop_assert!(verify_consistency(size1, size2, &longer, &root1.0, &root2.0).is_err());
            prop_assert!(verify_consistency(0, size2, &proof, &root1.0, &root2.0).is_err());
        }
    }
}
