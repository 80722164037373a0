//! `datadonor-witness`: cosign a transparency log's checkpoints (C2SP tlog-witness).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use datadonor_schemas::cosignature::WitnessSigner;
use datadonor_schemas::signing::SigningKey;
use datadonor_schemas::time::SystemClock;
use datadonor_service::ConnLimits;
use datadonor_witness::config::WitnessConfig;
use datadonor_witness::state::{write_atomic, StateDir};
use datadonor_witness::{server, Witness};

/// A witness of the Datadonor consent ledger.
#[derive(Parser)]
#[command(name = "datadonor-witness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a witness key (mode 0600) and print its verifier key for the logs' configuration.
    Keygen {
        /// The witness's name (its key name), e.g. `witness.example/w1`.
        #[arg(long)]
        name: String,
        /// Where to write the key (refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Print the verifier key of the configured witness.
    Vkey {
        /// The configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Serve `POST /add-checkpoint` over TLS 1.3 until interrupted.
    Serve {
        /// The configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn load(config_path: &Path) -> Result<(WitnessConfig, WitnessSigner)> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config =
        WitnessConfig::from_toml(&text).with_context(|| format!("in {}", config_path.display()))?;
    let key_path = WitnessConfig::resolve(config_path, &config.key);
    let key_text = std::fs::read_to_string(&key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let key = SigningKey::from_key_file(&key_text)
        .map_err(|_| anyhow::anyhow!("{}: not a key file", key_path.display()))?;
    let signer = WitnessSigner::new(&config.name, key).context("witness name")?;
    Ok((config, signer))
}

async fn serve(config_path: &Path) -> Result<()> {
    let (config, signer) = load(config_path)?;
    let state = StateDir::open(&WitnessConfig::resolve(config_path, &config.state_dir))?;
    let tls = datadonor_service::tls_config(
        &WitnessConfig::resolve(config_path, &config.tls_cert),
        &WitnessConfig::resolve(config_path, &config.tls_key),
    )
    .map_err(anyhow::Error::msg)?;
    let vkey = signer.public().to_vkey();
    let witness = Witness::new(
        signer,
        config.log_verifiers()?,
        state,
        Arc::new(SystemClock),
    );
    let limits = ConnLimits {
        max_connections: config.max_connections,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        connection_lifetime: Duration::from_millis(config.connection_timeout_ms),
    };
    let running = datadonor_service::start(
        config.listen,
        tls,
        server::router(Arc::new(witness)),
        limits,
    )
    .await
    .with_context(|| format!("listening on {}", config.listen))?;
    println!("witness {vkey} listening on {}", running.base_url());
    tokio::signal::ctrl_c().await.ok();
    running.shutdown().await;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { name, key } => {
            if key.exists() {
                anyhow::bail!("{} exists; not overwriting a key", key.display());
            }
            let k = SigningKey::generate().map_err(|_| anyhow::anyhow!("no randomness"))?;
            let text = k.to_key_file();
            let signer = WitnessSigner::new(&name, k).context("witness name")?;
            write_atomic(&key, text.as_bytes(), 0o600)?;
            println!("{}", signer.public().to_vkey());
            Ok(())
        }
        Command::Vkey { config } => {
            let (_, signer) = load(&config)?;
            println!("{}", signer.public().to_vkey());
            Ok(())
        }
        Command::Serve { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(serve(&config))
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datadonor-witness: {e:#}");
            ExitCode::FAILURE
        }
    }
}
