//! The fuzz targets of `fuzz/` on a stable toolchain: the committed seed corpus of every target
//! replays without a panic and reaches both acceptance and refusal, and deterministic
//! mutations of every seed (bit flips, byte changes, cuts, insertions, duplications, splices
//! with other seeds) never panic. The coverage-guided runs use the same functions through
//! `cargo fuzz` (see `fuzz/README.md`).

#[path = "../../fuzz/src/targets.rs"]
#[allow(dead_code)]
mod targets;

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mutants per seed, per target.
const MUTANTS_PER_SEED: usize = 400;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("entry").path();
            let name = p.file_name().expect("name").to_string_lossy().to_string();
            (name, std::fs::read(&p).expect("seed readable"))
        })
        .collect();
    out.sort();
    out
}

thread_local! {
    /// Panics on this thread, caught or not (a caught panic is still a finding: libFuzzer aborts
    /// on any panic, and a parser must return an error instead).
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

fn run(target: &str, f: fn(&[u8]) -> bool, input: &[u8], what: &str) -> bool {
    count_panics();
    PANICS.with(|p| p.set(0));
    let result = catch_unwind(AssertUnwindSafe(|| f(input)));
    let panicked = PANICS.with(Cell::get) > 0;
    match result {
        Ok(accepted) if !panicked => accepted,
        _ => {
            let crash = std::env::temp_dir().join(format!("datadonor-crash-{target}"));
            let _ = std::fs::write(&crash, input);
            panic!(
                "target {target} panicked on {what} ({} bytes, saved to {})",
                input.len(),
                crash.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_binary_and_a_corpus_reaching_acceptance_and_refusal() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    for (target, f) in targets::TARGETS {
        assert!(
            fuzz_dir()
                .join(format!("fuzz_targets/{target}.rs"))
                .is_file(),
            "no fuzz_targets/{target}.rs"
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "no [[bin]] {target}"
        );
        let seeds = seeds(target);
        assert!(seeds.len() >= 3, "{target}: {} seeds", seeds.len());
        let accepted = seeds.iter().filter(|(n, b)| run(target, *f, b, n)).count();
        assert!(accepted > 0, "{target}: no seed is accepted");
        assert!(accepted < seeds.len(), "{target}: no seed is refused");
    }
}

fn mutate(rng: &mut ChaCha8Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = b.len();
        match rng.gen_range(0..7) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                b[i] = [0, 0xff, 0x7f, 0x80, b'"', b'<', b',', b'\n'][rng.gen_range(0..8)];
            }
            2 if len > 0 => b.truncate(rng.gen_range(0..len)),
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                b.drain(i..j);
            }
            4 => {
                let i = rng.gen_range(0..=len);
                let mut ins = vec![0u8; rng.gen_range(1..16)];
                rng.fill_bytes(&mut ins);
                b.splice(i..i, ins);
            }
            5 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 256));
                let chunk = b[i..j].to_vec();
                b.splice(j..j, chunk);
            }
            _ if !other.is_empty() => {
                let i = rng.gen_range(0..=len);
                let j = rng.gen_range(0..other.len());
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            _ => {}
        }
    }
    b
}

#[test]
fn mutated_seeds_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x0da7_ad00);
    for (target, f) in targets::TARGETS {
        let seeds = seeds(target);
        let mut runs = 0usize;
        for (i, (name, seed)) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1) % seeds.len()].1;
            for m in 0..MUTANTS_PER_SEED {
                let input = mutate(&mut rng, seed, other);
                run(target, *f, &input, &format!("mutant {m} of {name}"));
                runs += 1;
            }
        }
        assert_eq!(runs, seeds.len() * MUTANTS_PER_SEED);
    }
}
