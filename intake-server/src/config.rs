//! The intake's configuration file (`config.toml` in the data directory).
//!
//! Every section and field has a named default (`DEFAULT_*`) with its rationale next to it;
//! unknown keys are refused, so a misspelt limit is an error at startup rather than a silently
//! ignored setting. `datadonor-intake init` writes the file with every default spelt out, and
//! `intake-server/config.sample.toml` is the same file checked by a test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default listen address: loopback only; a deployment puts its own address here.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default connection limit: enough for a regional service behind a load balancer, small
/// enough that file descriptors and buffers stay bounded.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default TLS handshake timeout (ms).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default time to receive the request headers (ms): slow-loris protection.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default time to receive a whole request body (ms): a 8 MiB donation over a slow mobile link.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 30_000;
/// Default time in-flight requests get to finish at shutdown (ms).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Default largest request body: a donation of a few years of monthly rows is tens of KiB;
/// 8 MiB leaves room for daily granularity without inviting memory exhaustion.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default largest number of rows in one donation (ten years of daily rows is ~3650).
pub const DEFAULT_MAX_ROWS_PER_DONATION: usize = 10_000;
/// Default largest commit group (donations sealed into one batch file per study).
pub const DEFAULT_GROUP_MAX_DONATIONS: usize = 64;
/// Default group window (ms): how long the committer waits for more donations after the first
/// one of a group. Bounds added latency; amortises one fsync over the group.
pub const DEFAULT_GROUP_WINDOW_MS: u64 = 10;
/// Default commit queue capacity; beyond it donations get `503 unavailable` (backpressure).
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default checkpoint origin (and signed-note key name).
pub const DEFAULT_ORIGIN: &str = "datadonor.localhost/ledger";
/// Default grace period of a superseded transport key: 7 days, longer than any client caches
/// the HPKE configuration and any queued offline donation is expected to wait.
pub const DEFAULT_TRANSPORT_KEY_GRACE_SECS: u64 = 7 * 86_400;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse (message has line and key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The data directory (relative paths are relative to the config file's directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Network and TLS.
    #[serde(default)]
    pub server: ServerConfig,
    /// Input limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Group commit.
    #[serde(default)]
    pub commit: CommitConfig,
    /// Ledger.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Keys.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Studies.
    #[serde(default)]
    pub studies: StudiesConfig,
    /// Witnesses asked to cosign each published checkpoint (C2SP tlog-witness); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<WitnessConfig>,
    /// Where the ledger and the sealed batches are kept.
    #[serde(default)]
    pub storage: StorageConfig,
    /// This intake's part in a deployment of several (`[cluster]`); a sequencer by default.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// The part an intake process plays (`[cluster] role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the ledger key and the stores: decides, seals, writes and signs (the only writer).
    #[default]
    Sequencer,
    /// Holds no ledger key, vault key or store: opens and checks donations, forwards them to a
    /// sequencer and relays its answers.
    Frontend,
}

/// `[cluster]`: several intakes, one sequencer (ARCHITECTURE.md, "Several intakes").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `sequencer` (default) or `frontend`.
    pub role: Role,
    /// Frontend: the sequencers' base URLs (`https://host:port`), tried in order; a standby
    /// sequencer listens only once it holds the ledger.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequencers: Vec<String>,
    /// Frontend: PEM file of the CA the sequencers' TLS certificates chain to (relative to the
    /// data directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// Frontend: the file holding the token it presents to the sequencers (relative to the
    /// data directory; the sequencer keeps its SHA-256 in `keys/frontend.sha256`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Frontend: the ledger's verifier key (`<origin>+<key hash>+<key>`, as the sequencer's
    /// `GET /v1/ledger-key` gives it), for `/v1/ledger-key` and the study bundles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_vkey: Option<String>,
}

/// Where the ledger and the sealed batches are kept (`[storage]`); the data directory by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `file` (`ledger/ledger.log` in the data directory) or `postgres` (`[storage.postgres]`).
    pub ledger: LedgerBackend,
    /// `local` (`batches/` in the data directory) or `s3` (`[storage.s3]`).
    pub batches: BatchBackend,
    /// The PostgreSQL ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
    /// The S3 bucket of sealed batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

/// The ledger backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerBackend {
    /// One append-only file in the data directory.
    #[default]
    File,
    /// A PostgreSQL table.
    Postgres,
}

/// The batch backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchBackend {
    /// Files in the data directory.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// Environment variable read for the PostgreSQL connection string when `url` is not set (so
/// the password need not be in the file).
pub const POSTGRES_URL_ENV: &str = "DATADONOR_POSTGRES_URL";
/// Default ledger table.
pub const DEFAULT_POSTGRES_TABLE: &str = "datadonor_ledger";
/// Default key prefix of batches in the bucket.
pub const DEFAULT_S3_PREFIX: &str = "batches";

/// `[storage.postgres]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`postgres://user:password@host:port/db?sslmode=require`); from
    /// `DATADONOR_POSTGRES_URL` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The ledger table (created if missing).
    #[serde(default = "default_pg_table")]
    pub table: String,
    /// PEM CA file (relative to the data directory) for TLS to the server; `sslmode` in the URL
    /// then decides whether TLS is required. Without it the connection is plain (loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// How long `serve` waits for the ledger's lock, in seconds (10 by default: a previous
    /// connection may still be ending). A standby sequencer sets a long wait: it starts
    /// serving when the sequencer holding the lock is gone.
    #[serde(default = "default_lock_wait_secs")]
    pub lock_wait_secs: u64,
}

fn default_lock_wait_secs() -> u64 {
    crate::store_pg::DEFAULT_LOCK_WAIT.as_secs()
}

fn default_pg_table() -> String {
    DEFAULT_POSTGRES_TABLE.to_string()
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_deref().map(crate::store_pg::redact_url))
            .field("table", &self.table)
            .field("ca_cert", &self.ca_cert)
            .field("lock_wait_secs", &self.lock_wait_secs)
            .finish()
    }
}

/// `[storage.s3]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket.
    pub bucket: String,
    /// Endpoint of an S3-compatible store; AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix of the batches.
    #[serde(default = "default_s3_prefix")]
    pub prefix: String,
    /// Allow `http://` endpoints (a loopback test server only).
    #[serde(default)]
    pub allow_http: bool,
    /// Access key id; `AWS_ACCESS_KEY_ID` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key; `AWS_SECRET_ACCESS_KEY` when absent (prefer the environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// How long, in seconds, a request the bucket answers with a server error (or a connection
    /// that fails before the request is sent) is retried, with exponential backoff, before the
    /// group it belongs to fails. The committer waits that long: donors' requests wait with it.
    #[serde(default = "default_s3_retry_timeout")]
    pub retry_timeout_secs: u64,
}

fn default_s3_prefix() -> String {
    DEFAULT_S3_PREFIX.to_string()
}

/// Default of `[storage.s3] retry_timeout_secs`.
pub const DEFAULT_S3_RETRY_TIMEOUT_SECS: u64 = 10;

fn default_s3_retry_timeout() -> u64 {
    DEFAULT_S3_RETRY_TIMEOUT_SECS
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("retry_timeout_secs", &self.retry_timeout_secs)
            .finish()
    }
}

/// A witness the intake asks to cosign its checkpoints (`[[witnesses]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's submission prefix, `https://…`; `/add-checkpoint` is appended.
    pub url: String,
    /// Its verifier key, `<name>+<hex key ID>+<base64(0x04 || public key)>`.
    pub vkey: String,
    /// PEM file of the CA its TLS certificate chains to (relative to the data directory).
    pub ca_cert: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
}

/// Network and TLS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address; port 0 picks a free port (see `RunningIntake::addr`).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM), relative to the data directory.
    pub tls_cert: PathBuf,
    /// Server private key (PEM), relative to the data directory.
    pub tls_key: PathBuf,
    /// Maximum concurrent connections; further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// TLS handshake timeout (ms).
    pub handshake_timeout_ms: u64,
    /// Header read timeout (ms).
    pub header_read_timeout_ms: u64,
    /// Body read timeout (ms).
    pub request_body_timeout_ms: u64,
    /// Drain timeout at shutdown (ms).
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8443))),
            tls_cert: PathBuf::from("tls/server.pem"),
            tls_key: PathBuf::from("tls/server.key"),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            request_body_timeout_ms: DEFAULT_REQUEST_BODY_TIMEOUT_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    }
}

/// Input limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body in bytes (`413 body-too-large` beyond).
    pub max_body_bytes: usize,
    /// Largest number of rows per donation (`422 too-many-rows` beyond).
    pub max_rows_per_donation: usize,
    /// Public reads (checkpoint, proofs, notices, bundles) a client address may burst.
    pub public_read_burst: u32,
    /// Public reads per second a client address is refilled with (`429 rate-limited`, with
    /// `Retry-After`, beyond).
    pub public_reads_per_second: f64,
}

/// Default burst of public reads per client address.
pub const DEFAULT_PUBLIC_READ_BURST: u32 = 600;
/// Default refill of public reads per client address and second.
pub const DEFAULT_PUBLIC_READS_PER_SECOND: f64 = 100.0;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_rows_per_donation: DEFAULT_MAX_ROWS_PER_DONATION,
            public_read_burst: DEFAULT_PUBLIC_READ_BURST,
            public_reads_per_second: DEFAULT_PUBLIC_READS_PER_SECOND,
        }
    }
}

/// Group commit settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// Largest group.
    pub group_max_donations: usize,
    /// Window after the first job of a group (ms).
    pub group_window_ms: u64,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Seconds between two sweeps, while serving, of batches no ledger entry names (0: only at
    /// start). The committer sweeps between groups, so no batch of its own is in flight.
    pub orphan_sweep_secs: u64,
}

/// Default seconds between orphan sweeps.
pub const DEFAULT_ORPHAN_SWEEP_SECS: u64 = 600;

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            group_max_donations: DEFAULT_GROUP_MAX_DONATIONS,
            group_window_ms: DEFAULT_GROUP_WINDOW_MS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            orphan_sweep_secs: DEFAULT_ORPHAN_SWEEP_SECS,
        }
    }
}

/// Ledger settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Checkpoint origin; also the signed-note key name.
    pub origin: String,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            origin: DEFAULT_ORIGIN.to_string(),
        }
    }
}

/// Key settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How long a superseded transport key stays accepted, in seconds from rotation.
    pub transport_key_grace_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            transport_key_grace_secs: DEFAULT_TRANSPORT_KEY_GRACE_SECS,
        }
    }
}

/// Study settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudiesConfig {
    /// Base64 Ed25519 public keys of the stewards whose signed studies (in `studies/`) are
    /// served. A study signed by anyone else is refused at startup.
    pub trusted_signers: Vec<String>,
}

impl Config {
    /// Parse a configuration text; `data_dir` stays as written.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Load a file; a relative `data_dir` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        if c.data_dir.is_relative() {
            let base = path.parent().unwrap_or_else(|| Path::new("."));
            c.data_dir = base.join(&c.data_dir);
        }
        Ok(c)
    }

    /// Load `<dir>/config.toml` with `data_dir` set to `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let mut c = Self::load(&dir.join("config.toml"))?;
        c.data_dir = dir.to_path_buf();
        Ok(c)
    }

    /// The configuration with every default, for `init`.
    pub fn with_defaults(trusted_signers: Vec<String>) -> Self {
        Self {
            data_dir: default_data_dir(),
            server: ServerConfig::default(),
            limits: LimitsConfig::default(),
            commit: CommitConfig::default(),
            ledger: LedgerConfig::default(),
            keys: KeysConfig::default(),
            studies: StudiesConfig { trusted_signers },
            witnesses: Vec::new(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Check ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be at least 1");
        }
        if self.limits.max_body_bytes < 1024
            || self.limits.max_body_bytes > datadonor_schemas::envelope::MAX_ROWS_LEN * 2
        {
            return bad("limits.max_body_bytes must be within 1 KiB..128 MiB");
        }
        if self.limits.max_rows_per_donation == 0 {
            return bad("limits.max_rows_per_donation must be at least 1");
        }
        if self.limits.public_read_burst == 0
            || !(self.limits.public_reads_per_second.is_finite()
                && self.limits.public_reads_per_second > 0.0)
        {
            return bad("limits.public_read_burst and public_reads_per_second must be positive");
        }
        if self.commit.group_max_donations == 0 || self.commit.queue_capacity == 0 {
            return bad("commit.group_max_donations and commit.queue_capacity must be >= 1");
        }
        if datadonor_schemas::checkpoint::Checkpoint::new(
            self.ledger.origin.clone(),
            0,
            datadonor_schemas::merkle::empty_root(),
        )
        .is_err()
            || !datadonor_schemas::checkpoint::is_valid_key_name(&self.ledger.origin)
        {
            return bad("ledger.origin must be a valid checkpoint origin and note key name");
        }
        if self.storage.ledger == LedgerBackend::Postgres && self.storage.postgres.is_none() {
            return bad("storage.ledger = \"postgres\" needs a [storage.postgres] section");
        }
        if self.storage.batches == BatchBackend::S3 {
            let Some(s3) = &self.storage.s3 else {
                return bad("storage.batches = \"s3\" needs a [storage.s3] section");
            };
            if s3.bucket.is_empty() {
                return bad("storage.s3.bucket must be set");
            }
            if let Some(e) = &s3.endpoint {
                let http = e.starts_with("http://");
                if !(e.starts_with("https://") || http) || (http && !s3.allow_http) {
                    return bad("storage.s3.endpoint must be https:// (http:// needs allow_http)");
                }
            }
        }
        if self.cluster.role == Role::Frontend {
            let c = &self.cluster;
            if c.sequencers.is_empty()
                || c.sequencers
                    .iter()
                    .any(|u| !u.starts_with("https://") || u.chars().any(char::is_control))
            {
                return bad("cluster.sequencers must list at least one https:// URL");
            }
            if c.ca_cert.is_none() || c.token_file.is_none() {
                return bad("a frontend needs cluster.ca_cert and cluster.token_file");
            }
            match &c.ledger_vkey {
                Some(v) if datadonor_schemas::checkpoint::NoteVerifier::parse_vkey(v).is_ok() => {}
                _ => return bad("a frontend needs cluster.ledger_vkey, the ledger's verifier key"),
            }
            if !self.witnesses.is_empty() {
                return bad("witnesses are asked by the sequencer; a frontend lists none");
            }
        }
        for w in &self.witnesses {
            if !w.url.starts_with("https://") || w.url.chars().any(char::is_control) {
                return bad("witnesses.url must be an https:// URL");
            }
            if datadonor_schemas::cosignature::WitnessKey::parse_vkey(&w.vkey).is_err() {
                return bad("witnesses.vkey must be a witness verifier key (type 0x04)");
            }
        }
        Ok(())
    }

    /// A path inside the data directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.data_dir.join(rel)
    }

    /// Durations.
    pub(crate) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    /// The sample's commented-out `[storage.*]` keys, uncommented, load; secrets stay out of
    /// `Debug`; an `http://` endpoint needs `allow_http`.
    #[test]
    fn the_sample_storage_keys_load_and_secrets_are_redacted() {
        let sample = include_str!("../config.sample.toml");
        let start = sample.find("[storage]").unwrap_or(0);
        let text: String = sample[start..]
            .lines()
            .map(|l| {
                l.strip_prefix("# ").filter(|r| {
                    r.starts_with('[')
                        || r.split_once(" = ").is_some_and(|(k, _)| {
                            k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        })
                })
            })
            .map(|l| l.unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("ledger = \"file\"", "ledger = \"postgres\"")
            .replace("batches = \"local\"", "batches = \"s3\"")
            .replace(
                "url = \"postgres://datadonor@",
                "url = \"postgres://datadonor:pw-secret@",
            )
            .replace(
                "secret_access_key = \"...\"",
                "secret_access_key = \"key-secret\"",
            );
        let text = format!("[storage]\nledger = \"postgres\"\nbatches = \"s3\"\n{}", {
            let i = text.find("[storage.postgres]").unwrap_or(0);
            &text[i..]
        });
        let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.storage.ledger, LedgerBackend::Postgres);
        assert_eq!(c.storage.batches, BatchBackend::S3);
        let s3 = c.storage.s3.as_ref().map(|s| s.bucket.as_str());
        assert_eq!(s3, Some("datadonor-batches"));
        let d = format!("{c:?}");
        assert!(!d.contains("pw-secret") && !d.contains("key-secret"), "{d}");
        let bad = text.replace("https://s3.eu-north-1", "http://s3.eu-north-1");
        assert!(
            Config::from_toml(&bad).is_err(),
            "http endpoint without allow_http"
        );
        assert!(Config::from_toml("[storage]\nledger = \"postgres\"\n").is_err());
        assert!(Config::from_toml("[storage]\nbatches = \"s3\"\n").is_err());
        assert!(Config::from_toml("[storage]\nledger = \"sqlite\"\n").is_err());
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    const VKEY_ORIGIN: &str = "datadonor.example/ledger";

    fn vkey() -> String {
        datadonor_schemas::checkpoint::NoteVerifier::new(VKEY_ORIGIN, [7; 32])
            .unwrap()
            .to_vkey()
    }

    fn frontend(extra: &str) -> String {
        format!(
            "[cluster]\nrole = \"frontend\"\nsequencers = [\"https://a:8443\"]\n\
             ca_cert = \"tls/ca.pem\"\ntoken_file = \"frontend.token\"\nledger_vkey = \"{}\"\n{extra}",
            vkey()
        )
    }

    /// A frontend needs every one of its settings, https:// sequencers and a verifier key, and
    /// asks no witnesses; a sequencer needs none of them.
    #[test]
    fn frontend_settings_are_checked() {
        let c = Config::from_toml(&frontend("")).unwrap();
        assert_eq!(c.cluster.role, Role::Frontend);
        assert_eq!(Config::from_toml("").unwrap().cluster.role, Role::Sequencer);
        let good = frontend("");
        for (what, bad) in [
            ("no sequencer", good.replace("[\"https://a:8443\"]", "[]")),
            ("http", good.replace("https://a", "http://a")),
            ("no CA", good.replace("ca_cert = \"tls/ca.pem\"\n", "")),
            (
                "no token",
                good.replace("token_file = \"frontend.token\"\n", ""),
            ),
            ("bad vkey", good.replace(&vkey(), "not-a-vkey")),
            (
                "witnesses",
                frontend(&format!(
                    "[[witnesses]]\nurl = \"https://w\"\nvkey = \"{}\"\nca_cert = \"w.pem\"\n",
                    vkey()
                )),
            ),
            ("unknown key", frontend("colour = \"blue\"\n")),
        ] {
            let e = Config::from_toml(&bad).expect_err(what).to_string();
            if what == "witnesses" {
                assert!(e.contains("witnesses are asked by the sequencer"), "{e}");
            }
        }
    }
}
