//! The witness's configuration file (`witness.toml`).
//!
//! ```toml
//! name = "witness.example/w1"        # the witness's key name in its cosignatures
//! key = "witness.key"                # Ed25519 seed, 64 hex digits (`keygen`), relative to this file
//! state_dir = "state"
//! listen = "127.0.0.1:7380"
//! tls_cert = "tls/server.pem"
//! tls_key = "tls/server.key"
//!
//! [[logs]]
//! origin = "datadonor.localhost/ledger"
//! vkey = "datadonor.localhost/ledger+1a2b3c4d+AQ…"   # the log's verifier key (type 0x01)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use datadonor_schemas::checkpoint::{is_valid_key_name, NoteVerifier};
use serde::{Deserialize, Serialize};

/// One log the witness knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The checkpoint origin line.
    pub origin: String,
    /// The log's verifier key, `<name>+<hex key ID>+<base64(0x01 || key)>`.
    pub vkey: String,
}

/// The witness's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's name (its key name in cosignature lines).
    pub name: String,
    /// The signing key file (64 hex digits of the Ed25519 seed), relative to the config file.
    pub key: PathBuf,
    /// Where the state files live, relative to the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Certificate chain (PEM), relative to the config file.
    #[serde(default = "default_cert")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM), relative to the config file.
    #[serde(default = "default_tls_key")]
    pub tls_key: PathBuf,
    /// Most connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TLS handshake (and request header) deadline.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    /// Longest life of one connection.
    #[serde(default = "default_connection_ms")]
    pub connection_timeout_ms: u64,
    /// The logs this witness cosigns.
    #[serde(default)]
    pub logs: Vec<LogConfig>,
}

fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7380))
}
fn default_cert() -> PathBuf {
    "tls/server.pem".into()
}
fn default_tls_key() -> PathBuf {
    "tls/server.key".into()
}
fn default_max_connections() -> usize {
    256
}
fn default_handshake_ms() -> u64 {
    5_000
}
fn default_connection_ms() -> u64 {
    30_000
}

/// A configuration that does not parse or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML of this shape.
    #[error("configuration: {0}")]
    Toml(String),
    /// The witness name is not a valid key name.
    #[error("name is not a valid key name (non-empty, no spaces, no '+')")]
    Name,
    /// A log's origin is empty or has control characters.
    #[error("log {index}: invalid origin")]
    Origin {
        /// 1-based index in `[[logs]]`.
        index: usize,
    },
    /// A log's vkey does not parse.
    #[error("log {index}: invalid vkey: {reason}")]
    Vkey {
        /// 1-based index in `[[logs]]`.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Two logs share an origin.
    #[error("log {index}: origin listed twice")]
    DuplicateOrigin {
        /// 1-based index in `[[logs]]` of the second.
        index: usize,
    },
    /// `max_connections` is zero.
    #[error("max_connections must be at least 1")]
    MaxConnections,
}

impl WitnessConfig {
    /// Parses and checks `witness.toml`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: Self = toml::from_str(text).map_err(|e| ConfigError::Toml(e.message().into()))?;
        c.validate()?;
        Ok(c)
    }

    /// The TOML form.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Checks names, vkeys and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_key_name(&self.name) {
            return Err(ConfigError::Name);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        for (i, log) in self.logs.iter().enumerate() {
            let index = i + 1;
            if log.origin.is_empty() || log.origin.chars().any(char::is_control) {
                return Err(ConfigError::Origin { index });
            }
            NoteVerifier::parse_vkey(&log.vkey).map_err(|e| ConfigError::Vkey {
                index,
                reason: e.to_string(),
            })?;
            if self.logs[..i].iter().any(|l| l.origin == log.origin) {
                return Err(ConfigError::DuplicateOrigin { index });
            }
        }
        Ok(())
    }

    /// The logs with their parsed verifier keys.
    pub fn log_verifiers(&self) -> Result<Vec<(String, NoteVerifier)>, ConfigError> {
        self.logs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                NoteVerifier::parse_vkey(&l.vkey)
                    .map(|v| (l.origin.clone(), v))
                    .map_err(|e| ConfigError::Vkey {
                        index: i + 1,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// `path` resolved against the directory of the config file `config_path`.
    pub fn resolve(config_path: &Path, path: &Path) -> PathBuf {
        match config_path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn parses_and_refuses_unknown_fields() {
        let text = format!(
            "name = \"w.example/1\"\nkey = \"witness.key\"\n[[logs]]\norigin = \"o\"\nvkey = \"{VKEY}\"\n"
        );
        let c = WitnessConfig::from_toml(&text).expect("config");
        assert_eq!(c.logs.len(), 1);
        assert_eq!(c.state_dir, PathBuf::from("state"));
        assert!(WitnessConfig::from_toml(&format!("{text}quorum = 2\n")).is_err());
        let twice = format!("{text}[[logs]]\norigin = \"o\"\nvkey = \"{VKEY}\"\n");
        assert!(matches!(
            WitnessConfig::from_toml(&twice),
            Err(ConfigError::DuplicateOrigin { index: 2 })
        ));
        let round = WitnessConfig::from_toml(&c.to_toml().expect("toml")).expect("again");
        assert_eq!(round, c);
    }
}
