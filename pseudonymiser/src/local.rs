//! `n` instances on one machine: the key ceremony run in one process ([`crate::dkg::run_local`]),
//! one directory per instance, a development CA, and the configuration a study embeds. The
//! embedded demo, the tests and `datadonor-pseudonymiser init-local` use it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use datadonor_schemas::signing::PublicKey;
use datadonor_schemas::threshold::PseudonymiserConfig;

use crate::dkg::{self, DkgError, Endpoint};
use crate::files::write_public;
use crate::server::{InstanceConfig, RunningInstance, ServeError};
use crate::tls::DevCa;

/// Why a local setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The ceremony.
    #[error(transparent)]
    Dkg(#[from] DkgError),
    /// Writing files.
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    /// Starting an instance.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The directory of instance `i` under `root`.
pub fn instance_dir(root: &Path, index: u16) -> PathBuf {
    root.join(format!("instance-{index}"))
}

/// Run the ceremony and write `n` instance directories under `root`, instance `i` listening
/// on `listen[i - 1]` (port 0: any free port, known only once started). Returns the public
/// result and the development CA's PEM (also written to `root/ca.pem`).
pub fn init_local(
    root: &Path,
    config_id: &str,
    instances: u16,
    threshold: u16,
    listen: &[SocketAddr],
    credential_issuer: Option<&PublicKey>,
) -> Result<(dkg::PublicResult, String), LocalError> {
    let (shares, result) = dkg::run_local(config_id, instances, threshold)?;
    let ca = DevCa::new()?;
    for share in &shares {
        let dir = instance_dir(root, share.index);
        share.write(&dir.join("share.json"))?;
        ca.issue_into(&dir, share.index)?;
        let cfg = InstanceConfig {
            listen: listen
                .get(usize::from(share.index) - 1)
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            credential_issuer: credential_issuer.map(|k| k.to_base64()),
            ..InstanceConfig::default()
        };
        write_public(&dir.join("instance.toml"), cfg.to_toml().as_bytes())?;
    }
    write_public(&root.join("ca.pem"), ca.pem().as_bytes())?;
    write_public(
        &root.join("public-result.json"),
        &serde_json::to_vec_pretty(&result).unwrap_or_default(),
    )?;
    Ok((result, ca.pem()))
}

/// A running local service: the instances and the configuration naming their addresses.
#[derive(Debug)]
pub struct LocalService {
    /// The running instances, by index.
    pub instances: Vec<RunningInstance>,
    /// The configuration a study embeds.
    pub config: PseudonymiserConfig,
    /// The development CA that signed the instances' certificates.
    pub ca_pem: String,
}

impl LocalService {
    /// Stop every instance.
    pub async fn shutdown(self) {
        for i in self.instances {
            i.shutdown().await;
        }
    }
}

/// [`init_local`] with free ports, then start every instance in this process and write the
/// configuration (`root/pseudonymiser.json`).
pub async fn start_local(
    root: &Path,
    config_id: &str,
    instances: u16,
    threshold: u16,
    credential_issuer: Option<&PublicKey>,
    tune: impl Fn(&mut InstanceConfig),
) -> Result<LocalService, LocalError> {
    let (result, ca_pem) = init_local(
        root,
        config_id,
        instances,
        threshold,
        &[],
        credential_issuer,
    )?;
    let mut running = Vec::new();
    let mut endpoints = Vec::new();
    for i in 1..=instances {
        let dir = instance_dir(root, i);
        let mut cfg = crate::server::load_config(&dir)?;
        tune(&mut cfg);
        let r = crate::server::start(&dir, cfg).await?;
        endpoints.push(Endpoint {
            index: i,
            url: r.base_url(),
            operator: format!("pseudonymiser {i} (local)"),
        });
        running.push(r);
    }
    let config = dkg::assemble_config(&result, 1, &endpoints, credential_issuer.copied())?;
    write_public(&root.join("pseudonymiser.json"), &config.to_json())?;
    Ok(LocalService {
        instances: running,
        config,
        ca_pem,
    })
}
