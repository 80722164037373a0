//! `datadonor-pseudonymiser`: run one pseudonymiser instance, take part in the key ceremony,
//! assemble the configuration a study embeds, and issue donor credentials for tests.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use datadonor_pseudonymiser::dkg::{self, Ceremony, Endpoint, PublicResult};
use datadonor_pseudonymiser::files::{write_public, write_secret};
use datadonor_pseudonymiser::{local, server};
use datadonor_schemas::signing::{Context, PublicKey, SignedObject, SigningKey};
use datadonor_schemas::threshold::DonorCredential;

/// One instance of the t-of-n threshold pseudonymisation service.
#[derive(Parser)]
#[command(name = "datadonor-pseudonymiser", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one instance from its directory (share.json, tls/, instance.toml).
    Serve {
        /// The instance's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Listen address (overrides instance.toml; `127.0.0.1:0` picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Set up n instances on this machine: run the key ceremony in one process, write
    /// DIR/instance-1 ... DIR/instance-n, a development CA (DIR/ca.pem) and the
    /// configuration (DIR/pseudonymiser.json). For trying the system out; a deployment runs
    /// `dkg` on each instance's own machine.
    InitLocal {
        /// Where to write.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// n.
        #[arg(long, default_value_t = 3)]
        instances: u16,
        /// t.
        #[arg(long, default_value_t = 2)]
        threshold: u16,
        /// First listen address; instance i listens on its port + i - 1.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9441")]
        listen: SocketAddr,
        /// The service's name.
        #[arg(long, default_value = "dk-pseudonymiser")]
        config_id: String,
        /// Require donor credentials signed by this enrolment public key (base64 file).
        #[arg(long, value_name = "FILE")]
        credential_issuer: Option<PathBuf>,
    },
    /// The key ceremony, one step at a time, at one instance.
    #[command(subcommand)]
    Dkg(DkgCommand),
    /// Assemble the configuration from every instance's public result.
    Config {
        /// Each instance's `public-result.json` (all must agree).
        #[arg(long = "result", value_name = "FILE", required = true)]
        results: Vec<PathBuf>,
        /// `INDEX=https://host:port`, once per instance.
        #[arg(long = "url", value_name = "INDEX=URL", required = true)]
        urls: Vec<String>,
        /// `INDEX=operator name`, once per instance.
        #[arg(long = "operator", value_name = "INDEX=NAME")]
        operators: Vec<String>,
        /// Configuration version.
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// Enrolment public key (base64 file) whose credentials the instances require.
        #[arg(long, value_name = "FILE")]
        credential_issuer: Option<PathBuf>,
        /// Where to write the configuration.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Issue a donor credential (what a study's enrolment does after an e-ID login).
    Credential {
        /// The enrolment's signing key file (64 hex digits).
        #[arg(long, value_name = "FILE")]
        issuer_key: PathBuf,
        /// The service's config_id.
        #[arg(long, default_value = "dk-pseudonymiser")]
        config_id: String,
        /// Days of validity.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Where to write the bearer credential (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DkgCommand {
    /// Round 1: keys and commitments. Writes DIR/dkg/round1.state (secret) and prints the
    /// path of the round-1 message to send to every other instance, and the identity
    /// fingerprint to compare out of band.
    Round1 {
        /// The instance's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// This instance's index.
        #[arg(long)]
        index: u16,
        /// n.
        #[arg(long)]
        instances: u16,
        /// t.
        #[arg(long)]
        threshold: u16,
        /// The service's name.
        #[arg(long, default_value = "dk-pseudonymiser")]
        config_id: String,
        /// Where to write the round-1 message.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Round 2: with every instance's round-1 message, seal one share per other instance.
    Round2 {
        /// The instance's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Every round-1 message (this instance's own included).
        #[arg(long = "round1", value_name = "FILE", required = true)]
        round1: Vec<PathBuf>,
        /// Directory to write `round2-FROM-to-TO.json` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Finish: open the shares addressed to this instance and write share.json and
    /// public-result.json.
    Finish {
        /// The instance's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The round-2 messages addressed to this instance.
        #[arg(long = "round2", value_name = "FILE", required = true)]
        round2: Vec<PathBuf>,
    },
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn read_public_key(p: &Path) -> Result<PublicKey> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    PublicKey::from_base64(t.trim())
        .map_err(|_| anyhow::anyhow!("{}: not a base64 Ed25519 public key", p.display()))
}

fn indexed(items: &[String], what: &str) -> Result<Vec<(u16, String)>> {
    items
        .iter()
        .map(|s| {
            let (i, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--{what} {s:?}: expected INDEX=VALUE"))?;
            let i: u16 = i
                .parse()
                .map_err(|_| anyhow::anyhow!("--{what} {s:?}: INDEX is not a number"))?;
            Ok((i, v.to_string()))
        })
        .collect()
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { dir, listen } => {
            let mut cfg = server::load_config(&dir)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let running = server::start(&dir, cfg).await?;
            println!(
                "pseudonymiser instance {} listening on {}",
                running.index(),
                running.base_url()
            );
            tokio::signal::ctrl_c().await.ok();
            running.shutdown().await;
        }
        Command::InitLocal {
            dir,
            instances,
            threshold,
            listen,
            config_id,
            credential_issuer,
        } => {
            let issuer = credential_issuer
                .as_deref()
                .map(read_public_key)
                .transpose()?;
            let addrs: Vec<SocketAddr> = (0..instances)
                .map(|i| SocketAddr::new(listen.ip(), listen.port().saturating_add(i)))
                .collect();
            let (result, _) = local::init_local(
                &dir,
                &config_id,
                instances,
                threshold,
                &addrs,
                issuer.as_ref(),
            )?;
            let endpoints: Vec<Endpoint> = addrs
                .iter()
                .enumerate()
                .map(|(i, a)| Endpoint {
                    index: i as u16 + 1,
                    url: format!("https://{a}"),
                    operator: format!("pseudonymiser {} (local)", i + 1),
                })
                .collect();
            let config = dkg::assemble_config(&result, 1, &endpoints, issuer)?;
            let out = dir.join("pseudonymiser.json");
            write_public(&out, &config.to_json())?;
            for i in 1..=instances {
                println!("wrote {}", local::instance_dir(&dir, i).display());
            }
            println!("wrote {} ({threshold} of {instances})", out.display());
            println!("wrote {}", dir.join("ca.pem").display());
        }
        Command::Dkg(d) => dkg_command(d)?,
        Command::Config {
            results,
            urls,
            operators,
            version,
            credential_issuer,
            out,
        } => {
            let rs: Vec<PublicResult> = results
                .iter()
                .map(|p| {
                    serde_json::from_slice(&read(p)?)
                        .with_context(|| format!("{}: not a public result", p.display()))
                })
                .collect::<Result<_>>()?;
            dkg::check_agreement(&rs)?;
            let ops = indexed(&operators, "operator")?;
            let endpoints: Vec<Endpoint> = indexed(&urls, "url")?
                .into_iter()
                .map(|(index, url)| Endpoint {
                    index,
                    operator: ops
                        .iter()
                        .find(|(i, _)| *i == index)
                        .map(|(_, o)| o.clone())
                        .unwrap_or_else(|| format!("pseudonymiser {index}")),
                    url,
                })
                .collect();
            let issuer = credential_issuer
                .as_deref()
                .map(read_public_key)
                .transpose()?;
            let config = dkg::assemble_config(&rs[0], version, &endpoints, issuer)?;
            write_public(&out, &config.to_json())?;
            println!("wrote {}", out.display());
        }
        Command::Credential {
            issuer_key,
            config_id,
            days,
            out,
        } => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&issuer_key)
                    .with_context(|| format!("reading {}", issuer_key.display()))?,
            );
            let key = SigningKey::from_key_file(&text)
                .map_err(|_| anyhow::anyhow!("{}: not a key file", issuer_key.display()))?;
            let mut subject = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut subject);
            let now = jiff_now();
            let c = DonorCredential {
                format: datadonor_schemas::PROTOCOL_VERSION,
                config_id,
                subject,
                not_after: now + days.max(1) * 86_400,
            };
            let signed = SignedObject::sign(Context::DonorCredential, &c, &key);
            write_secret(&out, DonorCredential::bearer(&signed).as_bytes())?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn jiff_now() -> i64 {
    use datadonor_schemas::time::Clock as _;
    datadonor_schemas::time::SystemClock.now()
}

fn dkg_command(d: DkgCommand) -> Result<()> {
    match d {
        DkgCommand::Round1 {
            dir,
            index,
            instances,
            threshold,
            config_id,
            out,
        } => {
            let state_path = dir.join("dkg/round1.state");
            if state_path.exists() {
                bail!(
                    "{} exists: this instance already ran round 1",
                    state_path.display()
                );
            }
            let (state, msg) = dkg::round1(&Ceremony {
                config_id,
                index,
                instances,
                threshold,
            })?;
            write_secret(&state_path, &state.to_json())?;
            write_public(&out, &msg)?;
            println!("wrote {}", out.display());
            println!("identity fingerprint: {}", dkg::identity_fingerprint(&msg)?);
        }
        DkgCommand::Round2 { dir, round1, out } => {
            let state_path = dir.join("dkg/round1.state");
            let state = dkg::Round1State::from_json(&read(&state_path)?)?;
            let msgs: Vec<Vec<u8>> = round1.iter().map(|p| read(p)).collect::<Result<_>>()?;
            for (p, m) in round1.iter().zip(&msgs) {
                println!(
                    "{}: identity fingerprint {}",
                    p.display(),
                    dkg::identity_fingerprint(m)?
                );
            }
            let from = state.index();
            let (state2, outgoing) = dkg::round2(state, &msgs)?;
            write_secret(&dir.join("dkg/round2.state"), &state2.to_json())?;
            std::fs::remove_file(&state_path).ok();
            for (to, m) in outgoing {
                let p = out.join(format!("round2-{from}-to-{to}.json"));
                write_public(&p, &m)?;
                println!("wrote {} (send to instance {to} only)", p.display());
            }
        }
        DkgCommand::Finish { dir, round2 } => {
            let state_path = dir.join("dkg/round2.state");
            let state = dkg::Round2State::from_json(&read(&state_path)?)?;
            let msgs: Vec<Vec<u8>> = round2.iter().map(|p| read(p)).collect::<Result<_>>()?;
            let (share, result) = dkg::finish(state, &msgs)?;
            share.write(&dir.join("share.json"))?;
            std::fs::remove_file(&state_path).ok();
            let p = dir.join("public-result.json");
            write_public(&p, &serde_json::to_vec_pretty(&result).unwrap_or_default())?;
            println!("wrote {}", dir.join("share.json").display());
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    if let Err(e) = run(Cli::parse()).await {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("datadonor-pseudonymiser: error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
