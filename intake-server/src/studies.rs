//! The studies the intake serves: signed study definitions from `studies/*.json`, each verified
//! against the stewards' keys in the configuration at startup; the consent notice texts they
//! name, from `studies/notices/` (served by SHA-256); and the steward-signed study bundles a
//! donor pins, from `studies/bundles/*.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datadonor_schemas::bundle::{notice_sha256, StudyBundle, MAX_NOTICE_LEN};
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
    /// The definition's [`StudyDefinition::arrow_schema`] (a donation's rows), built once.
    pub arrow_schema: SchemaRef,
    /// The definition's [`StudyDefinition::batch_schema`] (a sealed batch's rows), built once.
    pub batch_schema: SchemaRef,
}

/// All served studies by id, their notices and their bundles.
#[derive(Debug, Default)]
pub struct StudyRegistry {
    studies: BTreeMap<StudyId, Arc<LoadedStudy>>,
    notices: BTreeMap<[u8; 32], Arc<str>>,
    bundles: BTreeMap<StudyId, Arc<[u8]>>,
}

/// The regular files of `dir` whose name ends in `suffix`, sorted; none when `dir` is absent.
fn files_in(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, StudyLoadError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StudyLoadError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix) && !n.starts_with('.'))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

fn read(path: &Path) -> Result<Vec<u8>, StudyLoadError> {
    std::fs::read(path).map_err(|source| StudyLoadError::Io {
        path: path.to_path_buf(),
        source,
    })
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
        let mut notices = BTreeMap::new();
        for path in files_in(&dir.join("notices"), "")? {
            let bytes = read(&path)?;
            if bytes.len() > MAX_NOTICE_LEN {
                return Err(StudyLoadError::Invalid {
                    path,
                    reason: format!("a notice text is at most {MAX_NOTICE_LEN} bytes"),
                });
            }
            let hash = notice_sha256(&bytes);
            let text = String::from_utf8(bytes).map_err(|_| StudyLoadError::Invalid {
                path: path.clone(),
                reason: "a notice text is UTF-8".into(),
            })?;
            notices.insert(hash, Arc::from(text));
        }
        for s in studies.values() {
            for h in s.definition.notice_hashes() {
                if !notices.contains_key(&h) {
                    tracing::warn!(
                        study = %s.definition.id,
                        notice = %hex::encode(h),
                        "no text in studies/notices/ for a notice the study names: donors cannot be shown it"
                    );
                }
            }
        }
        Ok(Self {
            studies,
            notices,
            bundles: BTreeMap::new(),
        })
    }

    /// Load the study bundles of `dir/bundles/*.json`: each signed by one of `trusted`, for a
    /// served study's exact version and signed payload, naming `ledger` as the ledger's key and
    /// only witnesses in `witnesses` (the vkeys the intake gathers cosignatures from).
    pub fn load_bundles(
        &mut self,
        dir: &Path,
        trusted: &[String],
        ledger: &PublicKey,
        witnesses: &[String],
    ) -> Result<(), StudyLoadError> {
        let trusted: Vec<PublicKey> = trusted
            .iter()
            .map(|s| PublicKey::from_base64(s).map_err(|_| StudyLoadError::BadSigner(s.clone())))
            .collect::<Result<_, _>>()?;
        for path in files_in(&dir.join("bundles"), ".json")? {
            let bytes = read(&path)?;
            let invalid = |reason: String| StudyLoadError::Invalid {
                path: path.clone(),
                reason,
            };
            let obj = SignedObject::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))?;
            let b = StudyBundle::open(&obj, None).map_err(|e| invalid(e.to_string()))?;
            if !trusted.contains(&b.signed.signer) {
                return Err(invalid(
                    "signed by a key not in studies.trusted_signers".into(),
                ));
            }
            let id = &b.signed.body.study_id;
            let study = self
                .studies
                .get(id)
                .ok_or_else(|| invalid(format!("bundle for study {id}, which is not served")))?;
            let signer = SignedObject::from_bytes(&study.signed_bytes)
                .map(|o| o.public_key)
                .map_err(|e| invalid(e.to_string()))?;
            b.check_study(&study.definition, &study.sha256, &signer)
                .map_err(|e| invalid(format!("{e} (sign a new bundle for the served study)")))?;
            b.check_ledger(ledger).map_err(|e| invalid(e.to_string()))?;
            for w in &b.witnesses {
                if !witnesses.iter().any(|v| v == &w.to_vkey()) {
                    return Err(invalid(format!(
                        "names witness {:?}, which is not among the intake's [[witnesses]]",
                        w.name()
                    )));
                }
            }
            if self.bundles.contains_key(id) {
                return Err(invalid(format!("a second bundle for study {id}")));
            }
            self.bundles.insert(id.clone(), Arc::from(bytes));
        }
        Ok(())
    }

    /// A notice text by its SHA-256.
    pub fn notice(&self, sha256: &[u8; 32]) -> Option<&Arc<str>> {
        self.notices.get(sha256)
    }

    /// The signed bundle of a study, exactly as stored.
    pub fn bundle(&self, id: &StudyId) -> Option<&Arc<[u8]>> {
        self.bundles.get(id)
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
            arrow_schema: definition.arrow_schema(),
            batch_schema: definition.batch_schema(),
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
