//! What the analytics benchmarks share: options, and running each variant in a child process
//! (the benchmark binary re-executed with `--child <variant> <dir>`) that prints one line of
//! `key=value` fields, its wall time (`secs`) and its own peak RSS (`hwm_kib`, `VmHWM` from
//! `/proc/self/status`) among them, so that variants' peaks do not mix.

use std::path::Path;
use std::process::Command;

/// A benchmark's result type.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `--name N` (underscores allowed: `1_000_000`), or `default`.
pub fn arg(args: &[String], name: &str, default: usize) -> Res<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .replace('_', "")
            .parse()?),
        None => Ok(default),
    }
}

/// This process's peak resident set size in KiB.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The line a child printed.
#[derive(Debug, Clone, Default)]
pub struct ChildLine(pub String);

impl ChildLine {
    /// The number after `key=`.
    pub fn field(&self, key: &str) -> Res<f64> {
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("no {key} in {:?}", self.0))?
            .parse::<f64>()
            .map_err(Into::into)
    }
}

/// Run `variant` over `dir` in a child process and return the line it printed.
pub fn run_child(dir: &Path, variant: &str) -> Res<ChildLine> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--child", variant])
        .arg(dir)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{variant} child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(ChildLine(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}
