//! Benchmark: import + minimise + seal of a generated FHIR export (many Observations in one
//! Bundle) and of a generated Apple Health `export.xml`, each run in a child process of this
//! binary so that peak RSS (`VmHWM` from `/proc/self/status`) is measured separately.
//!
//! ```text
//! cargo bench -p datadonor-client --bench import_seal                          # small (default)
//! cargo bench -p datadonor-client --bench import_seal -- --apple-mb 1024       # the 1 GB target
//! cargo bench -p datadonor-client --bench import_seal -- --fhir-obs 1000000
//! cargo bench -p datadonor-client --bench import_seal -- --hostile-attrs 800000
//! ```
//!
//! Target: the 1 GB Apple export stays under 256 MB peak RSS. Exports are streamed to a temporary
//! directory, never built in memory.
//!
//! The `hostile` run is a small Apple export built to be slow to parse: one `<Record>` with
//! `--hostile-attrs` distinct attribute names (default 400,000, about 4 MB), the same with a duplicate name
//! at the end, and a `<Workout>` subtree a quarter as many levels deep, each level declaring a namespace. Its
//! time should stay proportional to its size (RUSTSEC-2026-0194: quick-xml before 0.41 spent O(n²) on the two
//! records).
#![forbid(unsafe_code)]

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use datadonor_client::client::PublishedStudy;
use datadonor_client::donation::{seal_donation, ConsentChoice};
use datadonor_client::minimise::{minimise_paths, MinimiseOptions};
use datadonor_schemas::envelope::{HpkeConfig, HpkeConfigList, HpkePrivateKey};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;

fn study() -> StudyDefinition {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/t2d-study.toml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    StudyDefinition::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn vmhwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A deterministic pseudo-random sequence (xorshift), so the bench needs no RNG crate.
struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CODES: [(&str, &str, f64, f64); 5] = [
    ("4548-4", "%", 5.0, 9.0),
    ("39156-5", "kg/m2", 20.0, 35.0),
    ("8480-6", "mm[Hg]", 100.0, 160.0),
    ("2339-0", "mg/dL", 70.0, 200.0),
    ("8867-4", "/min", 50.0, 100.0),
];

fn write_fhir(path: &Path, observations: u64) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = Xs(0x9e37_79b9_7f4a_7c15);
    write!(
        w,
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"fullUrl":"urn:uuid:p1","resource":{{"resourceType":"Patient","id":"p1","name":[{{"family":"Benchmark","given":["Bea"]}}],"gender":"female","birthDate":"1960-04-02","address":[{{"line":["Vestergade 1"],"postalCode":"5000"}}],"identifier":[{{"value":"999-00-0000"}}]}}}}"#
    )?;
    for i in 0..observations {
        let (code, unit, lo, hi) = CODES[(i % CODES.len() as u64) as usize];
        let v = lo + (hi - lo) * (rng.below(1000) as f64 / 1000.0);
        let (y, m, d) = (2000 + rng.below(24), 1 + rng.below(12), 1 + rng.below(28));
        write!(
            w,
            r#",{{"fullUrl":"urn:uuid:o{i}","resource":{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"{code}"}}]}},"subject":{{"reference":"urn:uuid:p1"}},"effectiveDateTime":"{y:04}-{m:02}-{d:02}T10:00:00+01:00","valueQuantity":{{"value":{v:.2},"unit":"{unit}","system":"http://unitsofmeasure.org","code":"{unit}"}}}}}}"#
        )?;
    }
    write!(w, "]}}")?;
    w.flush()
}

/// The start of a generated Apple export, up to and including `<Me>`.
const APPLE_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE HealthData [\n<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary)*)>\n]>\n<HealthData locale=\"da_DK\">\n <ExportDate value=\"2024-06-01 08:10:05 +0200\"/>\n <Me HKCharacteristicTypeIdentifierDateOfBirth=\"1965-05-20\" HKCharacteristicTypeIdentifierBiologicalSex=\"HKBiologicalSexFemale\"/>\n";

fn write_apple(path: &Path, megabytes: u64) -> std::io::Result<()> {
    let target = megabytes * 1024 * 1024;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = Xs(0x2545_f491_4f6c_dd1d);
    w.write_all(APPLE_HEAD.as_bytes())?;
    let mut written = APPLE_HEAD.len() as u64;
    let types = [
        (
            "HKQuantityTypeIdentifierHeartRate",
            "count/min",
            50.0,
            120.0,
        ),
        ("HKQuantityTypeIdentifierBloodGlucose", "mg/dL", 70.0, 200.0),
        ("HKQuantityTypeIdentifierBodyMassIndex", "count", 20.0, 35.0),
        (
            "HKQuantityTypeIdentifierBloodPressureSystolic",
            "mmHg",
            100.0,
            160.0,
        ),
        ("HKQuantityTypeIdentifierStepCount", "count", 10.0, 2000.0),
    ];
    while written < target {
        let (t, unit, lo, hi) = types[rng.below(types.len() as u64) as usize];
        let v = lo + (hi - lo) * (rng.below(1000) as f64 / 1000.0);
        let (y, m, d) = (2015 + rng.below(10), 1 + rng.below(12), 1 + rng.below(28));
        let (hh, mm) = (rng.below(24), rng.below(60));
        let rec = format!(
            " <Record type=\"{t}\" sourceName=\"Bea's Apple Watch\" sourceVersion=\"10.2\" device=\"&lt;&lt;HKDevice: 0x3012772a0&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch&gt;\" unit=\"{unit}\" creationDate=\"{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:10 +0200\" startDate=\"{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:00 +0200\" endDate=\"{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:05 +0200\" value=\"{v:.1}\"/>\n"
        );
        w.write_all(rec.as_bytes())?;
        written += rec.len() as u64;
    }
    w.write_all(b"</HealthData>\n")?;
    w.flush()
}

/// The `hostile` export (see the module docs); `attrs` distinct attribute names on one tag.
fn write_hostile_apple(path: &Path, attrs: u64) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    w.write_all(APPLE_HEAD.as_bytes())?;
    let glucose = |extra: &str| {
        format!(" <Record{extra} type=\"HKQuantityTypeIdentifierBloodGlucose\" unit=\"mg/dL\" startDate=\"2024-05-01 08:00:00 +0200\" value=\"140\"/>\n")
    };
    let names: String = (0..attrs).map(|i| format!(" a{i}=\"\"")).collect();
    w.write_all(glucose(&names).as_bytes())?;
    w.write_all(glucose(&format!("{names} a0=\"\"")).as_bytes())?;
    let depth = attrs / 4;
    w.write_all(b" <Workout>")?;
    for i in 0..depth {
        write!(w, "<p{}:n xmlns:p{}=\"urn:{i}\">", i % 7, i % 7)?;
    }
    for i in (0..depth).rev() {
        write!(w, "</p{}:n>", i % 7)?;
    }
    w.write_all(b"</Workout>\n")?;
    w.write_all(glucose("").as_bytes())?;
    w.write_all(b"</HealthData>\n")?;
    w.flush()
}

/// The child: import + minimise + seal one export; prints one line of results.
fn child(path: &Path) {
    let study = study();
    let steward = SigningKey::generate().expect("steward key");
    let published = PublishedStudy::from_signed(
        SignedObject::sign(Context::StudyDefinition, &study, &steward),
        None,
    )
    .expect("study");
    let (sk, pk) = HpkePrivateKey::generate();
    drop(sk);
    let hpke = HpkeConfigList {
        configs: vec![HpkeConfig::new(1, &pk)],
    };
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    let mut items = 0u64;
    let rows = minimise_paths(
        &[path],
        &study,
        MinimiseOptions::default().with_postcode("5000"),
        &mut |n| items = n,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let minimised = start.elapsed();
    let key = SigningKey::generate().expect("donor key");
    let consent = ConsentChoice {
        purposes: vec!["t2d-epidemiology".into()],
        expires_in_days: 365,
        language: None,
    };
    let sealed = seal_donation(
        &published,
        &rows,
        &Pseudonym([0x42; 32]),
        &key,
        &consent,
        &hpke,
        1_717_200_000,
    )
    .expect("seal");
    let total = start.elapsed();
    println!(
        "RESULT items={items} rows={} bytes={bytes} envelope={} minimise_s={:.3} total_s={:.3} vmhwm_kb={}",
        sealed.rows,
        sealed.envelope.len(),
        minimised.as_secs_f64(),
        total.as_secs_f64(),
        vmhwm_kb()
    );
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("0")
}

fn measure(label: &str, path: &Path) {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .arg("--child")
        .arg(path)
        .output()
        .expect("spawn child");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.starts_with("RESULT")) else {
        eprintln!(
            "{label}: child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    };
    let num = |k: &str| field(line, k).parse::<f64>().unwrap_or(0.0);
    let (items, rows, bytes, secs) = (num("items"), num("rows"), num("bytes"), num("total_s"));
    let mb = bytes / (1024.0 * 1024.0);
    println!(
        "{label:<7} input {mb:>8.1} MB  items {items:>10.0}  rows {rows:>5.0}  envelope {:>7.0} B  time {secs:>7.2} s  {:>8.0} items/s  {:>6.1} MB/s  peak RSS {:>6.1} MB",
        num("envelope"),
        items / secs.max(1e-9),
        mb / secs.max(1e-9),
        num("vmhwm_kb") / 1024.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let path = PathBuf::from(args.get(i + 1).expect("--child <path>"));
        child(&path);
        return;
    }
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let apple_mb = opt("--apple-mb", 16);
    let fhir_obs = opt("--fhir-obs", 50_000);
    let hostile_attrs = opt("--hostile-attrs", 400_000);
    let dir = std::env::temp_dir().join(format!("datadonor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let fhir = dir.join("bundle.json");
    let apple = dir.join("export.xml");
    let hostile = dir.join("hostile.xml");
    let t = Instant::now();
    write_fhir(&fhir, fhir_obs).expect("write FHIR export");
    write_apple(&apple, apple_mb).expect("write Apple export");
    write_hostile_apple(&hostile, hostile_attrs).expect("write hostile Apple export");
    println!(
        "generated {fhir_obs} FHIR observations, a {apple_mb} MB Apple export and a hostile one with {hostile_attrs} attributes on a tag in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    measure("fhir", &fhir);
    measure("apple", &apple);
    measure("hostile", &hostile);
    let _ = std::fs::remove_dir_all(&dir);
}
