//! The whole Datadonor pipeline on one machine, with no external services.
//!
//! Starts an intake on localhost with fresh keys in a temporary directory, generates a synthetic
//! population, has every donor donate through the donor-client library over HTTPS concurrently,
//! has some withdraw, has a steward approve a query and a researcher run it, compacts away the
//! withdrawn donors, runs the auditor's checks, and prints what happened and what was verified.
//! Exit status 0 when every step and check passed, 1 with the reason otherwise.

use std::process::ExitCode;

use clap::Parser;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "datadonor-demo",
    about = "Run the Datadonor pipeline end to end on localhost"
)]
struct Args {
    /// Number of synthetic donors.
    #[arg(long, default_value_t = 2000)]
    donors: u64,
    /// Seed of the synthetic population.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Donations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Percentage of donors who withdraw after donating.
    #[arg(long, default_value_t = 5)]
    withdraw_percent: u64,
    /// Keep the working directory here instead of a temporary one.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo failed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(datadonor_tests::demo::run(
        datadonor_tests::demo::DemoOptions {
            donors: args.donors,
            seed: args.seed,
            concurrency: args.concurrency,
            withdraw_percent: args.withdraw_percent,
            keep: args.keep,
            progress: !args.quiet,
        },
    )) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
