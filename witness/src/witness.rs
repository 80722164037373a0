//! The witness's decision on an `add-checkpoint` request, in the order of C2SP tlog-witness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datadonor_schemas::checkpoint::{self, CheckpointError, NoteVerifier};
use datadonor_schemas::cosignature::{AddCheckpointError, AddCheckpointRequest, WitnessSigner};
use datadonor_schemas::merkle::{self, MerkleError};
use datadonor_schemas::time::Clock;

use crate::state::{LogState, StateDir, StateError};

/// Why the witness did not cosign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// 400: the body is not an `add-checkpoint` request.
    #[error("malformed request: {0}")]
    Malformed(#[from] AddCheckpointError),
    /// 400: the checkpoint is signed but its body is not a canonical checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(CheckpointError),
    /// 404: the origin is not a log this witness knows.
    #[error("unknown log")]
    UnknownLog,
    /// 403: no valid signature by the log's key, or a signature by it fails.
    #[error("the log's signature does not verify: {0}")]
    BadSignature(CheckpointError),
    /// 400: `old` is larger than the checkpoint's size.
    #[error("old size {old} is larger than the checkpoint size {size}")]
    OldAfterNew {
        /// The old size sent.
        old: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// 409: `old` is not the size the witness last cosigned.
    #[error("the witness's size for this log is {size}")]
    Conflict {
        /// The size the witness last cosigned (0 if none).
        size: u64,
    },
    /// 422: a tree of size 0 whose root is not the empty tree's.
    #[error("a checkpoint of size 0 must have the empty tree's root")]
    EmptyTreeRoot,
    /// 422: a non-empty proof from size 0.
    #[error("a consistency proof from size 0 must be empty")]
    ProofFromZero,
    /// 422: the same size as the cosigned checkpoint with another root (a fork).
    #[error("same size as the cosigned checkpoint, different root")]
    Fork {
        /// The cosigned note, the evidence of the other view.
        cosigned: String,
    },
    /// 422: the consistency proof does not verify.
    #[error("the consistency proof does not verify: {reason}")]
    Inconsistent {
        /// The verifier's reason.
        reason: MerkleError,
        /// The cosigned note the new one is not consistent with.
        cosigned: String,
    },
    /// 500: the state could not be read or written; nothing was cosigned.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// 500: cosigning failed (a clock before 1970, or an invalid body).
    #[error("cosigning failed")]
    Cosign,
}

/// A witness: its key, its logs, its state.
#[derive(Debug)]
pub struct Witness {
    signer: WitnessSigner,
    logs: HashMap<String, NoteVerifier>,
    state: Mutex<StateDir>,
    clock: Arc<dyn Clock>,
}

impl Witness {
    /// A witness signing with `signer` for `logs` (origin, log key), keeping state in `state`.
    pub fn new(
        signer: WitnessSigner,
        logs: Vec<(String, NoteVerifier)>,
        state: StateDir,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Witness {
            signer,
            logs: logs.into_iter().collect(),
            state: Mutex::new(state),
            clock,
        }
    }

    /// The witness's public key.
    pub fn signer(&self) -> &WitnessSigner {
        &self.signer
    }

    /// The stored state of the log whose origin hashes to `origin_hash`, if any.
    pub fn cosigned_by_hash(&self, origin_hash: &str) -> Result<Option<LogState>, StateError> {
        let Some(origin) = self
            .logs
            .keys()
            .find(|o| crate::state::origin_hash(o) == origin_hash)
        else {
            return Ok(None);
        };
        let state = self.state.lock().map_err(|_| StateError::Corrupt)?;
        state.load(origin)
    }

    /// Decides on one `add-checkpoint` request body; on success returns the cosignature line(s).
    ///
    /// The check of `old` against the stored size and the write of the new state happen under
    /// one lock, and the state is durable before this returns.
    pub fn add_checkpoint(&self, body: &[u8]) -> Result<String, Refusal> {
        let req = AddCheckpointRequest::parse(body)?;
        // The origin is the note's first line; an unknown origin is 404 before any signature check.
        let origin = req
            .note
            .split(|&b| b == b'\n')
            .next()
            .and_then(|l| std::str::from_utf8(l).ok())
            .unwrap_or_default();
        let (origin, verifier) = self.logs.get_key_value(origin).ok_or(Refusal::UnknownLog)?;
        let opened =
            checkpoint::open(&req.note, std::slice::from_ref(verifier)).map_err(|e| match e {
                CheckpointError::UnverifiedNote
                | CheckpointError::InvalidSignature { .. }
                | CheckpointError::DuplicateSignature { .. }
                | CheckpointError::AmbiguousVerifier { .. } => Refusal::BadSignature(e),
                other => Refusal::MalformedCheckpoint(other),
            })?;
        let cp = &opened.checkpoint;
        if &cp.origin != origin {
            return Err(Refusal::UnknownLog);
        }
        if req.old_size > cp.size {
            return Err(Refusal::OldAfterNew {
                old: req.old_size,
                size: cp.size,
            });
        }
        let store = self.state.lock().map_err(|_| StateError::Corrupt)?;
        let stored = store.load(origin)?;
        let stored_size = stored.as_ref().map_or(0, |s| s.size);
        if req.old_size != stored_size {
            return Err(Refusal::Conflict { size: stored_size });
        }
        if cp.size == 0 && cp.root != merkle::empty_root() {
            return Err(Refusal::EmptyTreeRoot);
        }
        match &stored {
            _ if req.old_size == 0 => {
                if !req.proof.is_empty() {
                    return Err(Refusal::ProofFromZero);
                }
            }
            None => return Err(Refusal::Conflict { size: 0 }),
            Some(s) => {
                let old_root = s.root()?;
                if cp.size == s.size && cp.root != old_root {
                    let _ = store.keep_evidence(origin, self.clock.now(), body);
                    return Err(Refusal::Fork {
                        cosigned: s.note.clone(),
                    });
                }
                if let Err(reason) =
                    merkle::verify_consistency(s.size, cp.size, &req.proof, &old_root.0, &cp.root.0)
                {
                    let _ = store.keep_evidence(origin, self.clock.now(), body);
                    return Err(Refusal::Inconsistent {
                        reason,
                        cosigned: s.note.clone(),
                    });
                }
            }
        }
        let now = u64::try_from(self.clock.now()).map_err(|_| Refusal::Cosign)?;
        let body_text = cp.to_body();
        let line = self
            .signer
            .cosign(&body_text, now)
            .map_err(|_| Refusal::Cosign)?
            .to_line();
        let mut note = body_text;
        note.push('\n');
        for sig in &opened.signatures {
            note.push_str(&sig.to_line());
        }
        note.push_str(&line);
        store.store(&LogState {
            origin: origin.clone(),
            size: cp.size,
            root_hex: cp.root.to_hex(),
            note,
        })?;
        Ok(line)
    }
}
