//! `datadonor-intake`: the command line over the intake library (`init`, `init-frontend`,
//! `serve`, `rotate-key`, `migrate`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use datadonor_intake::Config;
use datadonor_schemas::time::{Clock, SystemClock};

#[derive(Parser)]
#[command(name = "datadonor-intake", version, about = "Datadonor intake service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: keys, dev TLS, config, the example study, a demo vault key.
    Init {
        /// The data directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Use this vault public key (vault.pub JSON or one base64 line) instead of generating
        /// a demo vault key pair.
        #[arg(long)]
        vault_public_key: Option<PathBuf>,
        /// The address `serve` listens on, written into the config (default 127.0.0.1:8443).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// The pseudonymisation service's configuration (`pseudonymiser.json`, as
        /// `datadonor-pseudonymiser init-local` or `config` writes it), embedded in the example
        /// study so donors can compute pseudonyms.
        #[arg(long, value_name = "FILE")]
        pseudonymiser_config: Option<PathBuf>,
    },
    /// Create a frontend's data directory from a sequencer's: transport keys, studies, TLS and
    /// the frontend token, no ledger or vault key; donations are forwarded to `--sequencer`.
    InitFrontend {
        /// The sequencer's data directory.
        #[arg(long)]
        from: PathBuf,
        /// The frontend's data directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// A sequencer's base URL (`https://host:port`); repeat for standbys, tried in order.
        #[arg(long = "sequencer", required = true, value_name = "URL")]
        sequencers: Vec<String>,
        /// The address the frontend listens on.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Serve HTTPS until SIGTERM or SIGINT.
    Serve {
        /// Data directory (reads DIR/config.toml).
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        dir: Option<PathBuf>,
        /// Configuration file (its data_dir is relative to the file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen on ADDR instead of the config's `server.listen`; port 0 picks a free port.
        /// The bound address is printed as `listening on https://ADDR`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Create a new transport key; the previous one stays accepted for the grace period.
    /// Run while the intake is stopped.
    RotateKey {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Move the ledger and the sealed batches from the stores DIR/config.toml names to those
    /// another configuration of the same data directory names (the embedded default to
    /// PostgreSQL and S3). Run while the intake is stopped; run again if it was interrupted.
    Migrate {
        /// Data directory (its config.toml names the stores to move from).
        #[arg(long)]
        dir: PathBuf,
        /// The configuration to move to (its data_dir, relative to the file, must be DIR).
        #[arg(long, value_name = "CONFIG")]
        to: PathBuf,
    },
}

fn load(dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match (dir, config) {
        (Some(d), _) => Config::load_dir(&d)?,
        (None, Some(c)) => Config::load(&c)?,
        (None, None) => anyhow::bail!("give --dir or --config"),
    })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "datadonor-intake: error: {}",
                datadonor_schemas::error_chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only on a terminal: a log redirected to a file or pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            dir,
            vault_public_key,
            listen,
            pseudonymiser_config,
        } => {
            let pseudonymiser = match &pseudonymiser_config {
                Some(p) => {
                    let bytes = std::fs::read(p).map_err(|e| {
                        datadonor_intake::Error::Init(format!("reading {}: {e}", p.display()))
                    })?;
                    Some(
                        datadonor_schemas::threshold::PseudonymiserConfig::from_json(&bytes)
                            .map_err(|e| {
                                datadonor_intake::Error::Init(format!("{}: {e}", p.display()))
                            })?,
                    )
                }
                None => None,
            };
            let options = datadonor_intake::init::InitOptions {
                vault_public_key: vault_public_key.as_deref(),
                listen,
                pseudonymiser: pseudonymiser.as_ref(),
            };
            let r = datadonor_intake::init::init_with(&dir, options, SystemClock.now())?;
            println!("initialised {}", r.dir.display());
            println!(
                "auditor token (also in auditor.token, which the auditor's commands read as \
                 --auditor-token @FILE; where the auditor is someone else, hand it over and delete the file):"
            );
            println!("{}", r.auditor_token.as_str());
            println!("demo steward key: {}", r.steward_public_key);
            if let Some(p) = r.vault_private_key {
                println!(
                    "demo vault private key: {} -- move it off this machine; serve never reads it",
                    p.display()
                );
            }
        }
        Command::InitFrontend {
            from,
            dir,
            sequencers,
            listen,
        } => {
            let d = datadonor_intake::init::init_frontend(&from, &dir, sequencers, listen)?;
            println!("initialised frontend {}", d.display());
        }
        Command::Serve {
            dir,
            config,
            listen,
        } => {
            let mut config = load(dir, config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(async move {
                let running = datadonor_intake::start(config).await?;
                println!("listening on https://{}", running.addr());
                let handle = running.shutdown_handle();
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("installing SIGTERM handler")?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("signal received, shutting down");
                let _ = handle.send(true);
                running.wait().await?;
                anyhow::Ok(())
            })?;
        }
        Command::Migrate { dir, to } => {
            let from = Config::load_dir(&dir)?;
            let target = Config::load(&to)?;
            let r = datadonor_intake::migrate::migrate(
                &from,
                &target,
                SystemClock.now(),
                &mut |line| eprintln!("{line}"),
            )
            .with_context(|| format!("migrate {}", dir.display()))?;
            if r.ledger_moved {
                println!(
                    "ledger records in the target: {} ({} copied by this run), root {}",
                    r.records,
                    r.records_copied,
                    r.root
                        .map_or_else(|| "(empty)".into(), |h| hex::encode(h.0))
                );
            }
            if r.batches_moved {
                println!(
                    "sealed batches the ledger names, in the target: {} ({} copied by this run); \
                     compacted batches: {} ({} copied by this run); {} bytes copied; not named by \
                     the ledger, not copied: {}; the source's are deleted",
                    r.batches,
                    r.batches_copied,
                    r.compacted,
                    r.compacted_copied,
                    r.bytes_copied,
                    r.unnamed.len()
                );
            }
            if let Some(old) = &r.old_ledger {
                println!("the local ledger directory is now {}", old.display());
            }
            if let Some(old) = &r.old_table {
                println!("the PostgreSQL ledger's tables are now {old} and {old}_*");
            }
            println!(
                "done: serve with {} (or make it {}/config.toml)",
                to.display(),
                dir.display()
            );
        }
        Command::RotateKey { dir } => {
            let config = Config::load_dir(&dir)?;
            let id = datadonor_intake::rotate_transport_key(&config, SystemClock.now())
                .with_context(|| format!("rotate-key {}", dir.display()))?;
            println!("new transport key id {id}; restart the intake to serve it");
        }
    }
    Ok(())
}
