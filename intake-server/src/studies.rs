//! The studies the intake serves: signed study definitions from `studies/*.json`, each verified
//! against the stewards' keys in the configuration at startup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datadonor_schemas::signing::{Context, PublicKey, SignedObject};
use datadonor_schemas::study::{StudyDefinition, StudyId};

/// Errors loading studies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StudyLoadError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A study file is invalid (parse, signature, untrusted signer, definition).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A trusted signer key in the configuration does not parse.
    #[error("studies.trusted_signers: {0:?} is not a base64 Ed25519 key")]
    BadSigner(String),
}

/// One served study.
#[derive(Debug)]
pub struct LoadedStudy {
    /// The definition.
    pub definition: StudyDefinition,
    /// SHA-256 of the signed payload (what manifests name as `study_sha256`).
    pub sha256: [u8; 32],
    /// The signed object exactly as stored and served.
    pub signed_bytes: Vec<u8>,
}

/// All served studies by id.
#[derive(Debug, Default)]
pub struct StudyRegistry {
    studies: BTreeMap<StudyId, Arc<LoadedStudy>>,
}

impl StudyRegistry {
    /// Load every `*.json` in `dir`, each a study signed by one of `trusted` (base64 keys).
    pub fn load(dir: &Path, trusted: &[String]) -> Result<Self, StudyLoadError> {
        let trusted: Vec<PublicKey> = trusted
            .iter()
            .map(|s| PublicKey::from_base64(s).map_err(|_| StudyLoadError::BadSigner(s.clone())))
            .collect::<Result<_, _>>()?;
        let mut studies = BTreeMap::new();
        let rd = std::fs::read_dir(dir).map_err(|source| StudyLoadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(|source| StudyLoadError::Io {
                path: path.clone(),
                source,
            })?;
            let invalid = |reason: String| StudyLoadError::Invalid {
                path: path.clone(),
                reason,
            };
            let s = Self::parse(&bytes, &trusted).map_err(invalid)?;
            if studies.contains_key(&s.definition.id) {
                return Err(invalid(format!("study {} defined twice", s.definition.id)));
            }
            studies.insert(s.definition.id.clone(), Arc::new(s));
        }
        Ok(Self { studies })
    }

    /// Parse and verify one signed study.
    pub fn parse(bytes: &[u8], trusted: &[PublicKey]) -> Result<LoadedStudy, String> {
        let obj = SignedObject::from_bytes(bytes).map_err(|e| e.to_string())?;
        let signer = obj
            .verify(Context::StudyDefinition)
            .map_err(|e| e.to_string())?;
        if !trusted.contains(&signer) {
            return Err("signed by a key not in studies.trusted_signers".into());
        }
        let definition = StudyDefinition::from_json(&obj.payload).map_err(|e| e.to_string())?;
        Ok(LoadedStudy {
            sha256: obj.payload_digest(),
            definition,
            signed_bytes: bytes.to_vec(),
        })
    }

    /// A study by id.
    pub fn get(&self, id: &str) -> Option<&Arc<LoadedStudy>> {
        let id = StudyId::new(id).ok()?;
        self.studies.get(&id)
    }

    /// Ids in order.
    pub fn ids(&self) -> impl Iterator<Item = &StudyId> {
        self.studies.keys()
    }
}
