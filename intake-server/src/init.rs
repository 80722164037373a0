//! `datadonor-intake init --dir D`: a complete, runnable data directory for development and
//! demos.
//!
//! Creates (secrets mode 0600):
//!
//! * `keys/`: HPKE transport key id 1, ledger Ed25519 seed, SHA-256 of the auditor token (see
//!   [`crate::keys`]) — and no OPRF key material: pseudonyms come from the threshold
//!   pseudonymisation service, whose configuration the example study embeds when one is given;
//! * `auditor.token`: the auditor token itself (0600), which the auditor's commands read as
//!   `--auditor-token @FILE`; where the auditor is someone else, the operator hands it over and deletes it;
//! * `tls/ca.pem`, `tls/server.pem`, `tls/server.key`: a throw-away CA and a server certificate
//!   for `localhost` and `127.0.0.1` (the CA key is not kept);
//! * `steward/steward.key`, `steward/steward.key.pub`: a demo steward key, in the key-file
//!   format `datadonor-analytics keygen` writes (so `approve --key` and `--approvers` take them)
//!   — in production the steward signs studies elsewhere; `serve` never reads this directory;
//! * `studies/t2d-dk.json`: the example study signed by that steward key;
//! * `vault.pub` and, unless `--vault-public-key` is given, `vault-private/vault.key`: a demo
//!   vault key pair. **`serve` never reads `vault-private/`**; move it to the steward's machine;
//! * `config.toml`: every setting with its default (the listen address as given with
//!   `--listen`), trusting the demo steward key;
//! * `ledger/ledger.log`, with a `KeyRotated` entry for transport key 1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use datadonor_schemas::bundle::StudyBundle;
use datadonor_schemas::envelope::{HpkePrivateKey, HpkePublicKey};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::time::UnixSeconds;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::keys::{self, write_atomic, write_secret, VaultPrivateKeyFile, VaultPublicKey};
use crate::store::{LedgerStore, LocalLedgerStore};
use crate::Error;

/// The example study shipped with the repository.
pub const EXAMPLE_STUDY_TOML: &str = include_str!("../../examples/t2d-study.toml");
/// Its consent notice.
pub const EXAMPLE_NOTICE: &str = include_str!("../../examples/t2d-notice.md");

/// Its consent notice in Danish.
pub const EXAMPLE_NOTICE_DA: &str = include_str!("../../examples/t2d-notice.da.md");

/// The example study's notice texts, by file name, in every language the study gives.
pub const EXAMPLE_NOTICES: [(&str, &str); 2] = [
    ("t2d-notice.md", EXAMPLE_NOTICE),
    ("t2d-notice.da.md", EXAMPLE_NOTICE_DA),
];

/// What `init` produced that the operator must see once.
#[derive(Debug)]
pub struct InitReport {
    /// The data directory.
    pub dir: PathBuf,
    /// The auditor token (also in `auditor.token`).
    pub auditor_token: Zeroizing<String>,
    /// The demo steward's public key (base64).
    pub steward_public_key: String,
    /// Where the vault private key was written, if init generated it.
    pub vault_private_key: Option<PathBuf>,
}

/// The frontend token a sequencer's directory holds for `init-frontend` to copy.
pub const FRONTEND_TOKEN: &str = "frontend.token";

/// What a frontend's directory takes from its sequencer's: the transport keys (it opens the
/// envelopes), the studies and their notices and bundles, the TLS certificate and CA, and the
/// frontend token. Not the ledger key, the vault key, the auditor or analytics credentials, or
/// any ledger or batch.
const FRONTEND_FILES: [&str; 4] = ["keys", "studies", "tls", FRONTEND_TOKEN];

/// `init-frontend`: a frontend's data directory made from its sequencer's (`from`), forwarding
/// to `sequencers`. Refuses if `dir/config.toml` exists.
pub fn init_frontend(
    from: &Path,
    dir: &Path,
    sequencers: Vec<String>,
    listen: Option<SocketAddr>,
) -> Result<PathBuf, Error> {
    if dir.join("config.toml").exists() {
        return Err(Error::Init(format!(
            "{} already holds a configuration",
            dir.display()
        )));
    }
    let source = Config::load_dir(from)?;
    for name in FRONTEND_FILES {
        copy_tree(&from.join(name), &dir.join(name), name)?;
    }
    // Keys the frontend must not hold: everything in keys/ but the transport keys.
    for entry in std::fs::read_dir(dir.join("keys")).map_err(Error::io("reading keys/"))? {
        let entry = entry.map_err(Error::io("reading keys/"))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("transport") {
            std::fs::remove_file(entry.path()).map_err(Error::io("pruning keys/"))?;
        }
    }
    let vkey =
        crate::ledger::LedgerSigner::new(keys::load_ledger_key(from)?, &source.ledger.origin)?
            .verifier()
            .to_vkey();
    let mut config = Config::with_defaults(source.studies.trusted_signers.clone());
    config.ledger = source.ledger.clone();
    config.keys = source.keys.clone();
    config.limits = source.limits.clone();
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    config.cluster = crate::config::ClusterConfig {
        role: crate::config::Role::Frontend,
        sequencers,
        ca_cert: Some(PathBuf::from("tls/ca.pem")),
        token_file: Some(PathBuf::from(FRONTEND_TOKEN)),
        ledger_vkey: Some(vkey),
    };
    config.validate()?;
    let text = format!(
        "# Datadonor intake configuration: a frontend, written by `datadonor-intake init-frontend`.\n\
         # It forwards donations to the sequencers listed under [cluster].\n{}",
        config.to_toml()
    );
    write_atomic(&dir.join("config.toml"), text.as_bytes(), 0o644)?;
    Ok(dir.to_path_buf())
}

/// Copy a file or a directory tree, keeping each file's mode.
fn copy_tree(from: &Path, to: &Path, what: &str) -> Result<(), Error> {
    let meta = std::fs::metadata(from).map_err(Error::io(format!("reading {what}")))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(Error::io(format!("creating {what}")))?;
        for entry in std::fs::read_dir(from).map_err(Error::io(format!("reading {what}")))? {
            let entry = entry.map_err(Error::io(format!("reading {what}")))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), what)?;
        }
        Ok(())
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(format!("creating {what}")))?;
        }
        std::fs::copy(from, to).map_err(Error::io(format!("copying {what}")))?;
        Ok(())
    }
}

/// The ledger file of a data directory.
pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("ledger/ledger.log")
}

/// The batch root of a data directory.
pub fn batches_path(dir: &Path) -> PathBuf {
    dir.join("batches")
}

/// SHA-256 of a public key, for `KeyRotated` entries.
pub fn public_key_sha256(pk: &[u8]) -> [u8; 32] {
    crate::validate::sha256(pk)
}

/// Parse a vault public key file: the `vault.pub` JSON form, or one line of base64 (key id 1).
pub fn parse_vault_public_key(bytes: &[u8]) -> Option<VaultPublicKey> {
    if let Some(v) = VaultPublicKey::from_json(bytes) {
        return Some(v);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let pk: [u8; 32] = raw.try_into().ok()?;
    Some(VaultPublicKey::new(1, &HpkePublicKey(pk)))
}

/// Choices `init` takes beyond the directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitOptions<'a> {
    /// The vault public key file to use instead of generating a demo vault key pair.
    pub vault_public_key: Option<&'a Path>,
    /// The listen address to write into `config.toml` (default: `DEFAULT_LISTEN`).
    pub listen: Option<SocketAddr>,
    /// The threshold pseudonymisation service the example study names (its configuration is
    /// embedded in the signed study). Without one, donors cannot compute pseudonyms for it.
    pub pseudonymiser: Option<&'a datadonor_schemas::threshold::PseudonymiserConfig>,
}

/// Create a data directory. Refuses if `dir/config.toml` exists.
pub fn init(
    dir: &Path,
    vault_public_key: Option<&Path>,
    now: UnixSeconds,
) -> Result<InitReport, Error> {
    init_with(
        dir,
        InitOptions {
            vault_public_key,
            ..InitOptions::default()
        },
        now,
    )
}

/// [`init`] with every option.
pub fn init_with(
    dir: &Path,
    options: InitOptions<'_>,
    now: UnixSeconds,
) -> Result<InitReport, Error> {
    let InitOptions {
        vault_public_key,
        listen,
        pseudonymiser,
    } = options;
    if dir.join("config.toml").exists() {
        return Err(Error::Init(format!(
            "{} already holds an intake (config.toml exists)",
            dir.display()
        )));
    }
    // A given vault key is read before anything is written, so a bad one leaves no directory
    // behind.
    let given_vault = match vault_public_key {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(Error::io(format!("reading {}", p.display())))?;
            Some(
                parse_vault_public_key(&bytes).ok_or_else(|| {
                    Error::Init(format!("{}: not a vault public key", p.display()))
                })?,
            )
        }
        None => None,
    };
    std::fs::create_dir_all(dir.join("keys")).map_err(Error::io("creating keys/"))?;
    for sub in ["tls", "studies", "steward", "ledger", "batches"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(Error::io(format!("creating {sub}/")))?;
    }

    // Keys.
    let (tid, tpk) = keys::create_transport_key(dir, now)?;
    let ledger = SigningKey::generate().map_err(|_| Error::Init("ledger key".into()))?;
    write_secret(&keys::ledger_key_path(dir), ledger.seed())?;
    let mut token_bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(token_bytes.as_mut());
    let token = Zeroizing::new(hex::encode(token_bytes.as_ref()));
    let hash = keys::AuditorTokenHash::of_token(&token);
    write_atomic(
        &keys::auditor_hash_path(dir),
        hex::encode(hash.0).as_bytes(),
        0o644,
    )?;
    write_secret(
        &dir.join("auditor.token"),
        format!("{}\n", token.as_str()).as_bytes(),
    )?;

    // The analytics credential for appending query runs and erasures to the ledger.
    let mut analytics_bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(analytics_bytes.as_mut());
    let analytics_token = Zeroizing::new(hex::encode(analytics_bytes.as_ref()));
    write_atomic(
        &keys::analytics_hash_path(dir),
        hex::encode(keys::AuditorTokenHash::of_token(&analytics_token).0).as_bytes(),
        0o644,
    )?;
    write_secret(
        &dir.join("analytics.token"),
        format!("{}\n", analytics_token.as_str()).as_bytes(),
    )?;

    // The frontends' credential for forwarding donations (`init-frontend` copies it).
    let mut frontend_bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(frontend_bytes.as_mut());
    let frontend_token = Zeroizing::new(hex::encode(frontend_bytes.as_ref()));
    write_atomic(
        &keys::frontend_hash_path(dir),
        hex::encode(keys::AuditorTokenHash::of_token(&frontend_token).0).as_bytes(),
        0o644,
    )?;
    write_secret(
        &dir.join(FRONTEND_TOKEN),
        format!("{}\n", frontend_token.as_str()).as_bytes(),
    )?;

    // Vault.
    let mut vault_private_key = None;
    let vault = match given_vault {
        Some(v) => v,
        None => {
            let (sk, pk) = HpkePrivateKey::generate();
            let file = VaultPrivateKeyFile {
                key_id: 1,
                private_key: base64::engine::general_purpose::STANDARD.encode(sk.to_bytes()),
            };
            let text = Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default());
            let p = dir.join("vault-private/vault.key");
            write_secret(&p, &text)?;
            vault_private_key = Some(p);
            VaultPublicKey::new(1, &pk)
        }
    };
    write_atomic(
        &dir.join("vault.pub"),
        &serde_json::to_vec_pretty(&vault).unwrap_or_default(),
        0o644,
    )?;

    // TLS.
    write_dev_tls(&dir.join("tls"))?;

    // Steward and the example study.
    let steward = SigningKey::generate().map_err(|_| Error::Init("steward key".into()))?;
    write_secret(
        &dir.join("steward/steward.key"),
        steward.to_key_file().as_bytes(),
    )?;
    let steward_pub = steward.public_key().to_base64();
    write_atomic(
        &dir.join("steward/steward.key.pub"),
        format!("{steward_pub}\n").as_bytes(),
        0o644,
    )?;
    let mut study = StudyDefinition::from_toml(EXAMPLE_STUDY_TOML)
        .map_err(|e| Error::Init(format!("example study: {e}")))?;
    study.pseudonymiser = pseudonymiser.cloned();
    study
        .validate()
        .map_err(|e| Error::Init(format!("example study: {e}")))?;
    let signed = SignedObject::sign(Context::StudyDefinition, &study, &steward);
    write_atomic(
        &dir.join(format!("studies/{}.json", study.id)),
        &signed.to_bytes(),
        0o644,
    )?;
    // Its notice texts, served by SHA-256, and the bundle a donor pins: the ledger's key and
    // (none yet) witnesses, signed by the steward.
    std::fs::create_dir_all(dir.join("studies/notices"))
        .map_err(Error::io("creating studies/notices/"))?;
    for (name, text) in EXAMPLE_NOTICES {
        write_atomic(
            &dir.join("studies/notices").join(name),
            text.as_bytes(),
            0o644,
        )?;
    }
    let vkey = crate::ledger::LedgerSigner::new(
        SigningKey::from_seed(ledger.seed()).map_err(|_| Error::Init("ledger key".into()))?,
        crate::config::DEFAULT_ORIGIN,
    )
    .map_err(|e| Error::Init(format!("ledger key: {e}")))?
    .verifier()
    .to_vkey();
    let bundle = StudyBundle::new(&study, signed.payload_digest(), &vkey, Vec::new(), 0);
    std::fs::create_dir_all(dir.join("studies/bundles"))
        .map_err(Error::io("creating studies/bundles/"))?;
    write_atomic(
        &dir.join(format!("studies/bundles/{}.json", study.id)),
        &bundle.sign(&steward).to_bytes(),
        0o644,
    )?;

    // Ledger: record the first transport key.
    let store = LocalLedgerStore::open(&ledger_path(dir))?;
    let existing = store.recover()?;
    let entry = LedgerEntry::KeyRotated {
        time: now,
        role: "hpke-transport".into(),
        key_id: tid,
        public_key_sha256: public_key_sha256(&tpk.0),
    };
    if existing.is_empty() {
        store.append(&[entry.to_bytes()])?;
    }

    // Config last: its presence marks a complete directory.
    let mut config = Config::with_defaults(vec![steward_pub.clone()]);
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let text = format!(
        "# Datadonor intake configuration, written by `datadonor-intake init` with every default.\n\
         # Paths are relative to the data directory. See intake-server/config.sample.toml.\n{}",
        config.to_toml()
    );
    write_atomic(&dir.join("config.toml"), text.as_bytes(), 0o644)?;
    Ok(InitReport {
        dir: dir.to_path_buf(),
        auditor_token: token,
        steward_public_key: steward_pub,
        vault_private_key,
    })
}

fn write_dev_tls(tls: &Path) -> Result<(), Error> {
    let e = |e: rcgen::Error| Error::Tls(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Datadonor development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let server_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut sp =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(e)?;
    sp.distinguished_name
        .push(rcgen::DnType::CommonName, "datadonor intake (development)");
    sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca, &ca_key).map_err(e)?;
    write_atomic(&tls.join("ca.pem"), ca.pem().as_bytes(), 0o644)?;
    write_atomic(&tls.join("server.pem"), server.pem().as_bytes(), 0o644)?;
    let key_pem = Zeroizing::new(server_key.serialize_pem());
    write_secret(&tls.join("server.key"), key_pem.as_bytes())?;
    Ok(())
}
