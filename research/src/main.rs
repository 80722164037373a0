//! `datadonor-research`: the researcher's command-line client of the steward's query service.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datadonor_research::{output, ServiceClient};

#[derive(Parser)]
#[command(
    name = "datadonor-research",
    version,
    about = "Run approved queries on the steward's query service and write the differentially private tables it releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate your signing key; prints the line the steward registers you with.
    Keygen {
        /// Key file to write (mode 0600); the public key goes to FILE.pub.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Your researcher name, as the steward registers it.
        #[arg(long)]
        name: String,
    },
    /// Sign and send an approved query; print the released table and write it to files.
    Query {
        /// Base URL of the query service (https://…).
        #[arg(long, value_name = "URL")]
        service: String,
        /// CA certificate(s) of the service, PEM.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// Your signing key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The query spec (TOML), exactly as approved.
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// The steward's signed approval of the spec (JSON).
        #[arg(long, value_name = "FILE")]
        approval: PathBuf,
        /// Write the table here too, by extension: .csv, .json or .parquet (repeatable).
        #[arg(long, value_name = "FILE")]
        out: Vec<PathBuf>,
        /// Write an SVG bar chart with error bars here.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Show the study's privacy budget and yours: totals and what is spent.
    Budget {
        /// Base URL of the query service (https://…).
        #[arg(long, value_name = "URL")]
        service: String,
        /// CA certificate(s) of the service, PEM.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// Your researcher name.
        #[arg(long, value_name = "NAME")]
        researcher: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "datadonor-research: {}",
                output::sanitize(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out, name } => {
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '#') {
                anyhow::bail!("--name: a researcher name is one word without `#`");
            }
            let public = datadonor_research::keygen(&out)?;
            println!(
                "wrote {} and {}",
                out.display(),
                datadonor_research::pub_path(&out).display()
            );
            println!("give the steward this line for the researchers file: {name} {public}");
            Ok(())
        }
        Command::Query {
            service,
            ca,
            key,
            spec,
            approval,
            out,
            plot,
        } => {
            // Everything local is checked before the request spends budget.
            for o in &out {
                output::format_of(o)?;
            }
            if let Some(p) = &plot {
                let svg = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
                if !svg {
                    anyhow::bail!("{}: --plot writes SVG; name the file .svg", p.display());
                }
            }
            let spec_toml = datadonor_research::load_spec(&spec)?;
            let approval = datadonor_research::load_approval(&approval)?;
            let key = datadonor_research::load_key(&key)?;
            let client = ServiceClient::from_ca_file(&service, &ca)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let table = runtime.block_on(client.query(&key, &spec_toml, &approval))?;
            print!("{}", output::to_text(&table));
            eprintln!("{}", datadonor_research::spend_summary(&table));
            let mut failed = None;
            for o in &out {
                match output::write_file(&table, o) {
                    Ok(()) => eprintln!("wrote {}", o.display()),
                    Err(e) => {
                        eprintln!("datadonor-research: {e}");
                        failed = Some(e.to_string());
                    }
                }
            }
            if let Some(p) = &plot {
                let written = output::to_svg(&table)
                    .map_err(anyhow::Error::from)
                    .and_then(|svg| {
                        std::fs::write(p, svg).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
                    });
                match written {
                    Ok(()) => eprintln!("wrote {}", p.display()),
                    Err(e) => {
                        eprintln!("datadonor-research: {e}");
                        failed = Some(e.to_string());
                    }
                }
            }
            match failed {
                // The table was released and printed above; the run is not repeated.
                Some(_) => {
                    anyhow::bail!("some outputs were not written (the table is printed above)")
                }
                None => Ok(()),
            }
        }
        Command::Budget {
            service,
            ca,
            researcher,
        } => {
            let client = ServiceClient::from_ca_file(&service, &ca)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let v = runtime.block_on(client.budget(Some(&researcher)))?;
            print!("{}", datadonor_research::budget_text(&v));
            Ok(())
        }
    }
}
