//! `datadonor-synth`: writes a deterministic synthetic population of Danish
//! donors (see `datadonor_tests::synthpop`) as FHIR R4 transaction Bundles
//! (one file per donor), a Synthea CSV set, or FHIR NDJSON, and prints a one-line
//! summary.
//!
//! ```text
//! datadonor-synth --seed 42 --donors 2000 --format fhir --out DIR
//! ```

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use datadonor_tests::synthpop::{self, Donor, PopulationConfig};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One pretty-printed FHIR R4 transaction Bundle per donor:
    /// DIR/NNNNNNN_<uuid>.json.
    Fhir,
    /// Synthea CSV: DIR/patients.csv, observations.csv, conditions.csv,
    /// medications.csv.
    Csv,
    /// FHIR Bulk Data NDJSON, one resource per line: DIR/fhir.ndjson.
    Ndjson,
}

/// Generate a synthetic population of Danish data donors.
#[derive(Debug, Parser)]
#[command(
    name = "datadonor-synth",
    version,
    about = "Generate a deterministic synthetic population of Danish data donors \
             (FHIR R4 Bundles, Synthea CSV or FHIR NDJSON)"
)]
struct Args {
    /// Population seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of donors.
    #[arg(long, default_value_t = 1000)]
    donors: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Fhir)]
    format: Format,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Fewest routine visits per donor.
    #[arg(long, default_value_t = 2)]
    visits_min: u32,
    /// Most routine visits per donor.
    #[arg(long, default_value_t = 8)]
    visits_max: u32,
    /// First day of the observation window (YYYY-MM-DD).
    #[arg(long, default_value = "2015-01-01")]
    start: jiff::civil::Date,
    /// Last day of the observation window and reference date for ages.
    #[arg(long, default_value = "2024-12-31")]
    end: jiff::civil::Date,
}

/// Running totals for the summary line.
#[derive(Default)]
struct Tally {
    donors: u64,
    observations: u64,
    t2d: u64,
}

impl Tally {
    fn add(&mut self, d: &Donor) {
        self.donors += 1;
        self.observations += d.observations.len() as u64;
        self.t2d += u64::from(d.has_t2d);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = PopulationConfig {
        seed: args.seed,
        donors: args.donors,
        visits_per_donor: (args.visits_min, args.visits_max),
        start: args.start,
        end: args.end,
    };
    cfg.validate()?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let mut tally = Tally::default();
    match args.format {
        Format::Fhir => {
            for d in synthpop::donors(&cfg) {
                let path = args.out.join(format!("{:07}_{}.json", d.index, d.id));
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                synthpop::write_fhir_bundle(&d, BufWriter::new(file))
                    .with_context(|| format!("writing {}", path.display()))?;
                tally.add(&d);
            }
        }
        Format::Csv => {
            let donors = synthpop::donors(&cfg).inspect(|d| tally.add(d));
            synthpop::write_synthea_csv(donors, &args.out)
                .with_context(|| format!("writing CSV to {}", args.out.display()))?;
        }
        Format::Ndjson => {
            let path = args.out.join("fhir.ndjson");
            let file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let donors = synthpop::donors(&cfg).inspect(|d| tally.add(d));
            synthpop::write_ndjson(donors, BufWriter::new(file))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }

    let pct = if tally.donors == 0 {
        0.0
    } else {
        100.0 * tally.t2d as f64 / tally.donors as f64
    };
    println!(
        "datadonor-synth: seed {} format {:?}: {} donors, {} observations, {} with T2D ({pct:.1} %) -> {}",
        cfg.seed,
        args.format,
        tally.donors,
        tally.observations,
        tally.t2d,
        args.out.display()
    );
    Ok(())
}
